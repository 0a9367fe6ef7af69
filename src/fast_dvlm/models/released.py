"""Open the authors' released checkpoints without their remote code.

Two kinds are known (config `model_type`):
- `fast_dvlm` (Efficient-Large-Model/Fast_dVLM_3B): Qwen2.5-VL converted with the direct recipe. Its
  config nests `text_config` / `vision_config` like `Qwen2_5_VLConfig`, may repeat text fields at the
  top level, and adds block-diffusion fields (`bd_size`, `block_length`, ...). Token-causal clean
  stream, so it decodes exactly like a model fast-dvlm converted itself.
- `Fast_dLLM_Qwen` (Fast_dLLM_v2_1.5B / 7B): text-only Qwen2 with flat fields and `bd_size`. It was
  trained with a block-causal clean stream over blocks aligned to absolute positions, so it decodes
  with that variant: block-causal prefill of the prompt's full blocks, its tail decoded inside the
  first answer block.

Each is mapped onto a transformers class (weights loaded by its own key conversion, `lm_head` tied
to the embeddings when absent) and our decoding settings, read from the checkpoint. A missing piece
is one clear error naming what is missing. The FP8 release (compressed-tensors) opens through
`fast_dvlm.quant`, emulated on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from ..errors import FastDVLMError, first_line
from ..settings import BLOCK_SIZE
from .qwen_text import TextProcessor
from .registry import get_family

if TYPE_CHECKING:
    from ..vlm import DiffusionVLM

RELEASED_MASK_TOKEN = "|<MASK>|"
BLOCK_FIELDS = ("bd_size", "block_length", "block_size")  # where a released config may keep B
DROPPED = ("architectures", "auto_map", "model_type", "quantization_config", "transformers_version")


def released_kind(config: dict[str, Any]) -> str | None:
    """`fast_dvlm` or `Fast_dLLM_Qwen` if `config` is one of the released formats, else None."""
    kind = config.get("model_type")
    return kind if kind in ("fast_dvlm", "Fast_dLLM_Qwen") else None


def open_released(path: Path, config: dict[str, Any], dtype: torch.dtype) -> DiffusionVLM:
    """A released checkpoint in `path` as a `DiffusionVLM` (its FP8 variant through `fast_dvlm.quant`)."""
    from ..vlm import DiffusionVLM

    kind = released_kind(config)
    tokenizer = released_tokenizer(path)
    if kind == "fast_dvlm":
        family = get_family("qwen2_5_vl")
        model_config = Qwen2_5_VLConfig(**vl_fields(config, path))
        processor = Qwen2_5_VLProcessor(
            image_processor=image_processor(path),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=tokenizer.chat_template or family.chat_template,
        )
    else:
        family = get_family("qwen2")
        model_config = Qwen2Config(**{k: v for k, v in config.items() if k not in DROPPED})
        if tokenizer.chat_template is None:
            tokenizer.chat_template = family.chat_template
        processor = TextProcessor(tokenizer)
    tie_head_if_absent(model_config, path)
    if config.get("quantization_config"):
        from ..quant import load_quantized

        model_config.quantization_config = config["quantization_config"]
        vlm = load_quantized(path, family, dtype, model_config, processor)
    else:
        vlm = DiffusionVLM(
            load_weights(family.model_class, path, model_config, dtype, kind), processor, family
        )
    vlm.settings.block_size = next((int(config[f]) for f in BLOCK_FIELDS if config.get(f)), BLOCK_SIZE)
    vlm.settings.clean_attention = "causal" if kind == "fast_dvlm" else "block-causal"
    vlm.settings.block_alignment = "answer" if kind == "fast_dvlm" else "absolute"
    vlm.settings.recipe = {"released": kind}  # converted by the authors' recipe: a block-diffusion model
    vlm.settings.write_to(vlm.model.config)
    return vlm


def vl_fields(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """`Qwen2_5_VLConfig` arguments: nested text fields win, top-level duplicates fill the gaps."""
    if not isinstance(config.get("vision_config"), dict):
        raise FastDVLMError(f"{path}/config.json claims Fast_dVLM but has no vision_config")
    nested = {"text_config", "vision_config"}
    top_level = {k: v for k, v in config.items() if k not in DROPPED and k not in nested}
    text = top_level | dict(config.get("text_config") or {})
    text.pop("model_type", None)
    if "hidden_size" not in text or "num_hidden_layers" not in text:
        raise FastDVLMError(f"{path}/config.json claims Fast_dVLM but has no text model dimensions")
    vision = {k: v for k, v in config["vision_config"].items() if k != "model_type"}
    shared = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = {k: top_level[k] for k in (*shared, "tie_word_embeddings") if k in top_level}
    return dict(text_config=text, vision_config=vision, **ids)


def released_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FastDVLMError(f"{path} has no usable tokenizer files: {first_line(exc)}") from None
    if tokenizer.mask_token is None and RELEASED_MASK_TOKEN in tokenizer.get_vocab():
        tokenizer.mask_token = RELEASED_MASK_TOKEN  # the releases add it without declaring it the mask
    return tokenizer


def image_processor(path: Path) -> Qwen2VLImageProcessor:
    """The saved image processor (`preprocessor_config.json` or inside `processor_config.json`), else
    Qwen2.5-VL's defaults."""
    if any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        return Qwen2VLImageProcessor.from_pretrained(path, local_files_only=True)
    return Qwen2VLImageProcessor()


def load_weights(
    model_class: type[PreTrainedModel], path: Path, config: Any, dtype: torch.dtype, kind: str
) -> PreTrainedModel:
    """The weights through transformers' own loader (it maps older key layouts); a missing tensor other
    than a tied `lm_head` is an error, not a silently random layer."""
    try:
        model, info = model_class.from_pretrained(
            path, config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise FastDVLMError(f"cannot load the {kind} weights in {path}: {first_line(exc)}") from None
    missing = sorted(k for k in info["missing_keys"] if k != "lm_head.weight")
    if missing:
        raise FastDVLMError(
            f"{path} claims {kind} but lacks {len(missing)} weight(s), e.g. {', '.join(missing[:3])}"
        )
    return model.eval()


def tie_head_if_absent(config: Any, path: Path) -> None:
    """A checkpoint without `lm_head.weight` shares it with the embeddings."""
    config.tie_word_embeddings = config.tie_word_embeddings or not has_tensor(path, "lm_head.weight")
    if hasattr(config, "text_config"):
        config.text_config.tie_word_embeddings = config.tie_word_embeddings


def has_tensor(path: Path, name: str) -> bool:
    """Whether the checkpoint stores `name` (single file or sharded with an index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return name in json.loads(index.read_text()).get("weight_map", {})
    single = path / "model.safetensors"
    if not single.is_file():
        return False
    from safetensors import safe_open

    with safe_open(single, "pt") as f:
        stored = f.keys()
    return name in stored
