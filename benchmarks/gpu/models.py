"""The kit's models: real-size shapes with random weights, built from configs on the device (no
download, no CPU-side initialisation of billions of weights), and the tiny shapes of `--dry-run`.

Latency and memory do not depend on the weights' values, so random weights measure what a real
checkpoint of the same shape costs.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from fast_dvlm.models.family import TinySize

VOCAB = 151_936  # Qwen2 / Qwen2.5 embedding rows

# Language models, as in each checkpoint's config.json.
LM_SHAPES: dict[str, dict] = {
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=VOCAB),
    "qwen2-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                       intermediate_size=8960, vocab_size=VOCAB),
    "qwen2.5-vl-3b-lm": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                             num_key_value_heads=2, intermediate_size=11008, vocab_size=VOCAB),
}  # fmt: skip
TINY_LM_SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512),
}  # fmt: skip
E2E_SHAPE = "qwen2.5-vl-3b-lm"  # the model timed end to end and quantised to FP8

# Qwen2.5-VL-3B through the tiny builder: language model and vision tower at the real width and
# depth (the builder fixes the ViT's heads at 2 and its MLP at 2x width: 2560 where 3B has 3420).
VLM_3B = TinySize(hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008,
                  vision_hidden_size=1280, vision_layers=32, image_size=448, init_std=0.02)  # fmt: skip


def build_lm(shape: dict, device: str, dtype: torch.dtype) -> PreTrainedModel:
    """A random Qwen2 causal LM of `shape`, created directly on `device` in `dtype`."""
    config = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=8192)
    with torch.device(device):
        return Qwen2ForCausalLM._from_config(config, dtype=dtype).eval()


def sync(device: str) -> None:
    """Wait for the device's queue, so that a host clock measures the work (no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
