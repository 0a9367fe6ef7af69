"""Write and read FP8 checkpoints in compressed-tensors format.

Written: every quantised Linear as `weight` (float8_e4m3fn) + `weight_scale` (fp32 [out, 1]), all
else as it was, and the `quantization_config` in config.json; key names are transformers' own
(`save_pretrained`), so SGLang and vLLM load the directory on a GPU. Read back by `fast_dvlm.load`
on any machine: transformers builds the model from the checkpoint with the scales set aside, then
each language-model Linear that has a scale becomes an emulated `FP8Linear`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig

from ..errors import FastDVLMError, first_line
from ..models.family import Family
from .config import scheme_of
from .linear import FP8Linear
from .quantize import language_model_linears

if TYPE_CHECKING:
    from ..vlm import DiffusionVLM

SCALE = ".weight_scale"


def save_quantized(vlm: DiffusionVLM, path: str | Path) -> None:
    """Write `vlm` (quantised by `quantize`, emulated or natively) as a compressed-tensors checkpoint."""
    if getattr(vlm.model.config, "quantization_config", None) is None:
        raise FastDVLMError("the model is not quantised: run fast_dvlm.quant.quantize on it first")
    state = vlm.model.state_dict()
    for name, module in vlm.model.named_modules():
        weight = getattr(module, "weight", None)
        if hasattr(weight, "qdata"):  # a torchao Float8Tensor: the same codes and scales FP8Linear holds
            state[f"{name}.weight"], state[f"{name}{SCALE}"] = weight.qdata, weight.scale
    vlm.settings.write_to(vlm.model.config)
    vlm.model.save_pretrained(path, state_dict=state)
    vlm.processor.save_pretrained(path)


def load_quantized(
    path: Path, family: Family, dtype: torch.dtype = torch.float32, config: Any = None, processor: Any = None
) -> DiffusionVLM:
    """Open a compressed-tensors FP8 checkpoint with emulated FP8 linear layers (runs on CPU).

    `config` and `processor` replace the ones saved in `path` where those need translating first
    (the authors' released FP8 checkpoint)."""
    from ..vlm import DiffusionVLM

    try:
        config = config or AutoConfig.from_pretrained(path, local_files_only=True)
        quant_config = dict(config.quantization_config)
        scheme = scheme_of(quant_config)
        del (
            config.quantization_config
        )  # else transformers would hand loading to the compressed-tensors package
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(path.glob("*.safetensors")):
            tensors |= load_file(file)
        scales = {k.removesuffix(SCALE): tensors.pop(k) for k in list(tensors) if k.endswith(SCALE)}
        # the e4m3 weights load into the plain Linears exactly (every e4m3 value is an fp16/bf16/fp32 value)
        model = family.model_class.from_pretrained(None, config=config, state_dict=tensors, dtype=dtype)
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
        processor = processor or family.load_processor(path)
    except (OSError, ValueError, KeyError) as exc:
        raise FastDVLMError(f"cannot load the FP8 checkpoint in {path}: {first_line(exc)}") from exc
    vlm = DiffusionVLM(model, processor, family)
    lm = family.language_model(model)
    for name, linear in language_model_linears(vlm).items():
        key = _checkpoint_name(name, scales, path)
        if key is None:
            continue  # left in high precision (listed in `ignore`)
        fp8 = FP8Linear(tensors[f"{key}.weight"], scales.pop(key), linear.bias, scheme.quantize_input)
        parent, _, attr = name.rpartition(".")
        setattr(lm.get_submodule(parent), attr, fp8)
    if scales:
        raise FastDVLMError(
            f"{path} quantises layers outside the language model ({', '.join(sorted(scales)[:3])}, ...): "
            "fast-dvlm emulates FP8 in the language model only"
        )
    model.config.quantization_config = quant_config
    return vlm


def _checkpoint_name(lm_name: str, scales: dict[str, torch.Tensor], path: Path) -> str | None:
    """The checkpoint's name for the language-model layer `lm_name` (e.g. `layers.0.mlp.up_proj`):
    checkpoints prefix the language model differently (`model.`, `model.language_model.`), never the
    layer path inside it."""
    matches = [key for key in scales if key == lm_name or key.endswith(f".{lm_name}")]
    if len(matches) > 1:
        raise FastDVLMError(f"{path}: several quantised layers match {lm_name}: {', '.join(matches)}")
    return matches[0] if matches else None
