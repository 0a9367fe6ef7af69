"""FP8 (e4m3) quantisation math: one symmetric absmax scale per row of the last dimension.

A weight's rows are its output channels (static scales, computed once); an activation's rows are
its tokens (dynamic scales, computed on every call). The math is torchao's
(`_choose_scale_float8`, `_quantize_affine_float8`, `_dequantize_affine_float8`), so a checkpoint
written here holds the bytes torchao and an FP8 GEMM would use:

    scale = absmax(row) / 448          (fp32; 448 is e4m3's largest finite value)
    q     = e4m3(clamp(x / scale, ±448))   (round to nearest even)
    x̂     = q * scale

One deliberate difference: an all-zero row gets a tiny absmax instead of a zero scale, so it
quantises to zeros rather than to NaN.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
_TINY = torch.finfo(torch.float32).tiny


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """`[..., 1]` fp32 scales that map each row's largest magnitude onto ±448."""
    absmax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    return absmax.clamp(min=_TINY) / E4M3_MAX


def to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The e4m3 codes of `x` under `scale` (broadcast over rows), saturating at ±448."""
    return (x.detach().float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def from_e4m3(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`q * scale`, computed in fp32, returned in `dtype`."""
    return (q.float() * scale).to(dtype)


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """`x` after a per-row quantise-dequantise round trip, in `x`'s dtype."""
    scale = row_scales(x)
    return from_e4m3(to_e4m3(x, scale), scale, x.dtype)
