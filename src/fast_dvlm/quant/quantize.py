"""Quantise a `DiffusionVLM`'s language model to FP8; vision tower, embeddings and lm_head stay as they are.

Natively (a CUDA GPU with FP8 tensor cores, compute capability 8.9+) torchao's FP8 configs do it:
`Float8DynamicActivationFloat8WeightConfig(PerRow)` for W8A8, `Float8WeightOnlyConfig(PerRow)` for
weight-only. Anywhere else `emulate=True` swaps in `FP8Linear`, which stores the same e4m3 codes and
scales (bit for bit: tests check it against torchao) and applies the same math in fp32, so accuracy
can be measured on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import FastDVLMError
from .config import Scheme, get_scheme, quantization_config
from .linear import FP8Linear

if TYPE_CHECKING:
    from ..vlm import DiffusionVLM


def native_fp8_available() -> bool:
    """A CUDA GPU whose tensor cores compute in FP8 (Ada, Hopper and later)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def language_model_linears(vlm: DiffusionVLM) -> dict[str, nn.Linear]:
    """The language model's linear layers, by name relative to the language model."""
    lm = vlm.family.language_model(vlm.model)
    return {name: m for name, m in lm.named_modules() if isinstance(m, nn.Linear)}


def ignore_list(vlm: DiffusionVLM) -> list[str]:
    """compressed-tensors `ignore` entries for every linear layer outside the language model.

    A top-level layer (lm_head) is named as is; a subtree (the vision tower, a projector) by a regex
    on its root, which matches its names however the loader prefixes them (`visual.…` in the
    checkpoint and SGLang, `model.visual.…` in transformers).
    """
    inside = {id(m) for m in vlm.family.language_model(vlm.model).modules()}
    entries: list[str] = []
    for name, module in vlm.model.named_modules():
        if not isinstance(module, nn.Linear) or id(module) in inside:
            continue
        parts = name.removeprefix("model.").split(".")
        entry = parts[0] if len(parts) == 1 else rf"re:.*{parts[0]}\..*"
        if entry not in entries:
            entries.append(entry)
    return entries


def quantize(vlm: DiffusionVLM, scheme: str, emulate: bool = False) -> DiffusionVLM:
    """Quantise `vlm`'s language-model linear layers in place with `scheme` (fp8-w8a8 or fp8-weight)."""
    spec = get_scheme(scheme)
    if not emulate and not native_fp8_available():
        found = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
        raise FastDVLMError(
            f"{scheme} runs natively only on a CUDA GPU with FP8 support (compute capability 8.9+, e.g. L4, "
            f"H100), found {found}; use emulate=True (CLI: --emulate) to apply the same FP8 math in fp32 here"
        )
    ignore = ignore_list(vlm)
    if emulate:
        _swap_linears(vlm, spec)
    else:
        _quantize_with_torchao(vlm, spec)
    vlm.model.config.quantization_config = quantization_config(spec, ignore)
    return vlm


def _swap_linears(vlm: DiffusionVLM, scheme: Scheme) -> None:
    lm = vlm.family.language_model(vlm.model)
    for name, linear in language_model_linears(vlm).items():
        parent, _, attr = name.rpartition(".")
        setattr(lm.get_submodule(parent), attr, FP8Linear.from_linear(linear, scheme.quantize_input))


def _quantize_with_torchao(vlm: DiffusionVLM, scheme: Scheme) -> None:
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise FastDVLMError("native FP8 needs torchao: pip install 'fast-dvlm[quant]'") from None
    if scheme.quantize_input:
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    else:
        config = Float8WeightOnlyConfig(granularity=PerRow())
    quantize_(vlm.family.language_model(vlm.model), config)  # its default filter: every nn.Linear
