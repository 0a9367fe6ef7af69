"""Which response tokens are masked: a noise level per block, and complementary copies
(as the authors' code draws them)."""

from __future__ import annotations

import torch


def noise_masks(
    maskable: torch.Tensor,
    blocks: torch.Tensor,
    generator: torch.Generator,
    eps: float = 1e-3,
    complementary: bool = True,
    always_masked: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Masks `[L]` (True = replaced by [MASK]) for each noisy copy of one sample.

    Each block draws t ~ U(0, 1) and masks each of its maskable tokens with probability
    p = (1 - eps) t + eps. With `complementary`, a second copy masks exactly the maskable tokens the
    first left visible, so every maskable token is supervised once per sample. `always_masked`
    forces tokens (e.g. the response's `<|im_end|>`) into the first copy's mask.
    """
    t = torch.rand(int(blocks.max()) + 1, generator=generator)
    p = ((1 - eps) * t + eps)[blocks]
    first = maskable & (torch.rand(maskable.shape, generator=generator) < p)
    if always_masked is not None:
        first |= always_masked & maskable
    return [first, maskable & ~first] if complementary else [first]
