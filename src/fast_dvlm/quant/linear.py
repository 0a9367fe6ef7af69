"""`FP8Linear`: a linear layer stored as FP8 and run by emulation, on any device."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import E4M3, fake_quantize, from_e4m3, row_scales, to_e4m3


class FP8Linear(nn.Module):
    """A linear layer whose weight is e4m3 codes with one static fp32 scale per output channel.

    It holds exactly what the checkpoint holds: `weight` (e4m3, [out, in]), `weight_scale` (fp32,
    [out, 1]) and `bias` (high precision). `forward` dequantises and multiplies in fp32: what an FP8
    GEMM (e4m3 × e4m3, fp32 accumulation, scales applied to the output) computes, up to the order of
    the sums. With `quantize_input` (W8A8) the input is first quantised per token with a dynamic
    scale; without it (weight-only) the input stays in high precision.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        quantize_input: bool,
    ) -> None:
        super().__init__()
        if weight.dtype != E4M3 or weight_scale.shape != (weight.shape[0], 1):
            raise ValueError(
                f"expected an e4m3 weight [out, in] and scales [out, 1], got {weight.dtype} "
                f"{tuple(weight.shape)} and {tuple(weight_scale.shape)}"
            )
        self.out_features, self.in_features = weight.shape
        self.quantize_input = quantize_input
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantize_input: bool) -> FP8Linear:
        scale = row_scales(linear.weight)
        return cls(to_e4m3(linear.weight, scale), scale, linear.bias, quantize_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = fake_quantize(x.float()) if self.quantize_input else x.float()  # one scale per token
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x32, from_e4m3(self.weight, self.weight_scale), bias).to(x.dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FP8Linear:
        """Device moves apply as usual; dtype casts (`model.half()`) leave the e4m3 weight and its
        fp32 scales alone: they are the quantised model."""
        weight, scale = self.weight, self.weight_scale
        super()._apply(fn, recurse)
        self.weight, self.weight_scale = weight.to(self.weight.device), scale.to(self.weight_scale.device)
        return self

    def extra_repr(self) -> str:
        kind = "W8A8, per-token dynamic activations" if self.quantize_input else "weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 {kind}"
