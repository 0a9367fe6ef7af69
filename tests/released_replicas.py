"""Tiny checkpoints written in the released formats (Fast_dVLM_3B, Fast_dLLM_v2), made on the spot.

Config fields, weight key names and tokenizer files follow what the releases are known to hold;
the weights are random (large init, so decoding differences show). Each builder also returns the
in-memory transformers model the files were written from, as the reference to compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from fast_dvlm.models.family import TinySize
from fast_dvlm.models.registry import get_family
from fast_dvlm.models.tokenizer import train_bpe_tokenizer

MASK = "|<MASK>|"
SIZE = TinySize(init_std=0.3)


def _tokenizer(family_name: str):
    family = get_family(family_name)
    return train_bpe_tokenizer((*family.special_tokens, MASK), chat_template=family.chat_template)


def _save(model: PreTrainedModel, out: Path, drop: tuple[str, ...], rename: dict[str, str]) -> None:
    tensors = {}
    for key, value in model.state_dict().items():
        if any(key.startswith(d) for d in drop):
            continue
        for old, new in rename.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        tensors[key] = value.contiguous().clone()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def fast_dvlm_replica(
    out: Path, tied: bool = False, legacy_keys: bool = False, drop: tuple[str, ...] = (), bd_size: int = 32
) -> PreTrainedModel:
    """A Fast_dVLM_3B-format checkpoint; `legacy_keys` writes the older `model.layers` / `visual` layout."""
    out.mkdir(parents=True, exist_ok=True)
    family = get_family("qwen2_5_vl")
    tokenizer = _tokenizer("qwen2_5_vl")
    rows = -(-len(tokenizer) // 64) * 64
    config = family.tiny_config(tokenizer, SIZE, rows)
    for part in (config, config.text_config, config.vision_config):
        part.initializer_range = SIZE.init_std
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = family.model_class(config).eval()
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    rename = {"model.language_model.": "model.", "model.visual.": "visual."} if legacy_keys else {}
    _save(model, out, (("lm_head.",) if tied else ()) + drop, rename)
    text = config.text_config.to_dict()
    vision = config.vision_config.to_dict()
    released = {
        "architectures": ["Fast_dVLMForConditionalGeneration"],
        "model_type": "fast_dvlm",
        "auto_map": {"AutoModelForCausalLM": "modeling_fast_dvlm.Fast_dVLMForConditionalGeneration"},
        "text_config": text,
        "vision_config": vision,
        **{
            k: text[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps")
        },  # duplicated
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "tie_word_embeddings": tied,
        "bd_size": bd_size,
        "block_length": bd_size,
        "self_spec_inference_mode": "quadratic",
        "complementary_mask": True,
        "anneal_block_size": True,
    }
    (out / "config.json").write_text(json.dumps(released, indent=1))
    tokenizer.save_pretrained(out)
    family.tiny_processor(tokenizer, SIZE).image_processor.save_pretrained(out)
    return model


def fast_dllm_v2_replica(out: Path, tied: bool = True, bd_size: int = 32) -> PreTrainedModel:
    """A Fast_dLLM_v2-format checkpoint: flat Qwen2 fields, the misspelt mask flag, plain Qwen2 keys."""
    out.mkdir(parents=True, exist_ok=True)
    family = get_family("qwen2")
    tokenizer = _tokenizer("qwen2")
    rows = -(-len(tokenizer) // 64) * 64
    config = family.tiny_config(tokenizer, SIZE, rows)
    config.initializer_range = SIZE.init_std
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = family.model_class(config).eval()
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    _save(model, out, ("lm_head.",) if tied else (), {})
    released = config.to_dict() | {
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "model_type": "Fast_dLLM_Qwen",
        "auto_map": {"AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
        "bd_size": bd_size,
        "conplemenrary_mask": True,
    }
    (out / "config.json").write_text(json.dumps(released, indent=1))
    tokenizer.save_pretrained(out)
    return model
