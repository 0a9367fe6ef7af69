"""The FP8 schemes, and the compressed-tensors `quantization_config` that describes them in config.json.

compressed-tensors' "float-quantized" format is what llm-compressor writes for FP8 models and what
SGLang, vLLM and transformers (with the `compressed-tensors` package, on a GPU) load natively:
each quantised Linear stores `weight` as float8_e4m3fn and `weight_scale` as fp32 [out, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import FastDVLMError

QUANT_METHOD = "compressed-tensors"
FORMAT = "float-quantized"
_WEIGHTS = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False}
_INPUTS = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}
_DEFAULTS = {"symmetric": True, "dynamic": False}  # compressed-tensors' defaults for fields left out


@dataclass(frozen=True)
class Scheme:
    name: str
    quantize_input: bool  # W8A8: activations quantised per token on the fly; else weight-only


SCHEMES = {s.name: s for s in (Scheme("fp8-w8a8", True), Scheme("fp8-weight", False))}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise FastDVLMError(f"unknown quantisation scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def quantization_config(scheme: Scheme, ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config`: every Linear not matched by `ignore` is FP8."""
    group = {
        "targets": ["Linear"],
        "weights": dict(_WEIGHTS),
        "input_activations": dict(_INPUTS) if scheme.quantize_input else None,
        "output_activations": None,
        "format": FORMAT,
    }
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": group},
        "ignore": ignore,
        "kv_cache_scheme": None,
    }


def is_fp8_checkpoint(config: dict[str, Any]) -> bool:
    """Whether a raw config.json dict describes a compressed-tensors checkpoint (ours or llm-compressor's)."""
    return (config.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD


def scheme_of(quant_config: dict[str, Any]) -> Scheme:
    """The scheme a compressed-tensors config describes, if fast-dvlm can emulate it; else one clear error."""
    groups = list((quant_config.get("config_groups") or {}).values())
    if len(groups) == 1 and _matches(groups[0].get("weights"), _WEIGHTS):
        inputs = groups[0].get("input_activations")
        if inputs is None:
            return SCHEMES["fp8-weight"]
        if _matches(inputs, _INPUTS):
            return SCHEMES["fp8-w8a8"]
    raise FastDVLMError(
        "this compressed-tensors checkpoint is not one fast-dvlm can run on CPU: it supports one config "
        "group of FP8 (8-bit float) weights with per-channel static scales, and optionally per-token "
        "dynamic FP8 activations"
    )


def _matches(args: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    return args is not None and all(args.get(k, _DEFAULTS.get(k)) == v for k, v in expected.items())
