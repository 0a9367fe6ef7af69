"""torchao's native FP8 against bf16 and against fast-dvlm's emulation.

Native W8A8 needs a CUDA GPU of compute capability 8.9 or more; weight-only runs anywhere (slowly on
a CPU), which is what `--dry-run` measures.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fast_dvlm import DiffusionVLM
from fast_dvlm.quant import FP8Linear
from fast_dvlm.quant.quantize import language_model_linears, native_fp8_available

from .passes import pass_costs

SCHEMES = {"fp8-w8a8": True, "fp8-weight": False}  # scheme -> quantises activations


def torchao_config(quantize_input: bool):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow

    if quantize_input:
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    return Float8WeightOnlyConfig(granularity=PerRow())


def runnable(scheme: str, device: str) -> bool:
    return not SCHEMES[scheme] or (device.startswith("cuda") and native_fp8_available())


def pass_cost_ratios(
    model: nn.Module, counts: list[int], context: int, repeats: int, device: str
) -> dict[str, dict]:
    """Per scheme: its pass costs (ms) and their ratio to the unquantised model's, at each size."""
    from torchao.quantization import quantize_

    base = pass_costs(model, counts, context, repeats, device)
    out: dict[str, dict] = {"bf16_ms": base}
    for scheme, quantize_input in SCHEMES.items():
        if not runnable(scheme, device):
            out[scheme] = {"skipped": "native W8A8 needs a CUDA GPU of compute capability 8.9+"}
            continue
        quantised = copy.deepcopy(model)
        quantize_(quantised.model, torchao_config(quantize_input))  # the LM's linears, not lm_head
        costs = pass_costs(quantised, counts, context, repeats, device)
        out[scheme] = {"ms": costs, "ratio_vs_bf16": {n: costs[n] / base[n] for n in counts}}
        del quantised
    return out


def codes_equal_emulation(vlm: DiffusionVLM, device: str) -> dict[str, dict]:
    """Per scheme: layers whose torchao codes and scales equal FP8Linear's bit for bit, out of all,
    and the largest relative difference of one layer's output (native GEMM vs emulation)."""
    from torchao.quantization import quantize_

    out: dict[str, dict] = {}
    for scheme, quantize_input in SCHEMES.items():
        if not runnable(scheme, device):
            out[scheme] = {"skipped": "native W8A8 needs a CUDA GPU of compute capability 8.9+"}
            continue
        equal, worst = 0, 0.0
        linears = language_model_linears(vlm)
        for linear in linears.values():
            native = copy.deepcopy(linear).to(device)
            quantize_(native, torchao_config(quantize_input), filter_fn=lambda m, _: isinstance(m, nn.Linear))
            emulated = FP8Linear.from_linear(linear.to(device), quantize_input)
            w = native.weight
            same_codes = torch.equal(w.qdata.view(torch.uint8), emulated.weight.view(torch.uint8))
            equal += int(same_codes and torch.equal(w.scale.float(), emulated.weight_scale))
            x = torch.randn(16, linear.in_features, device=device)
            with torch.inference_mode():
                a, b = native(x).float(), emulated(x).float()
            worst = max(worst, float((a - b).norm() / b.norm()))
        out[scheme] = {"layers_equal": equal, "layers": len(linears), "max_output_rel_diff": worst}
    return out
