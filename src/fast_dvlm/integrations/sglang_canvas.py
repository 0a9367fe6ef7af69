"""What fast-dvlm's SGLang algorithm does to one request's canvas, free of SGLang so it runs (and is
tested) anywhere.

With separate context encoding, SGLang encodes everything committed in a causal pass, then
denoises a canvas of B new positions with bidirectional passes whose keys it discards. A
fast-dvlm block maps onto that canvas directly: it starts as `[seed, MASK x (B-1)]`, the seed being
the causal pass's next-token prediction, and every pass unmasks with the engine's own rule
(`BlockDiffusionDecoder.unmask`: token shift, τ-threshold, sub-blocks left to right). The next
causal pass, over the finished canvas, writes the keys an AR model would and predicts the next seed,
exactly as the engine's final causal pass of a block does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..decoding import DecodeOptions
from ..decoding.diffusion import BlockDiffusionDecoder
from ..settings import SUB_BLOCK_SIZE, THRESHOLD


def canvas_decoder(mask_id: int, block_size: int, settings: dict[str, Any]) -> BlockDiffusionDecoder:
    """The engine's diffusion decoder, set up from SGLang's algorithm config (threshold, sub_block_size)."""
    options = DecodeOptions(
        max_new_tokens=block_size,  # unused: SGLang decides when a request stops
        stop_ids=frozenset(),
        mask_id=mask_id,
        block_size=block_size,
        sub_block_size=settings.get("sub_block_size", SUB_BLOCK_SIZE),
        threshold=settings.get("threshold", THRESHOLD),
    )
    return BlockDiffusionDecoder(options)


def start_canvas(
    seed: int, decoder: BlockDiffusionDecoder, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh canvas `[seed, MASK x (B-1)]` ([B] ids) and which positions are still masked ([B] bool)."""
    canvas = decoder.masked_block([seed], device)
    masked = torch.ones_like(canvas, dtype=torch.bool)
    masked[0] = False  # the seed is known, whatever token it is
    return canvas, masked


def denoise_step(
    decoder: BlockDiffusionDecoder, canvas: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor
) -> bool:
    """Unmask, in place, what one bidirectional pass over the canvas decides; True once nothing is masked.

    `logits` ([B, V]) are the pass's full logits; with the token shift row j predicts position j + 1.
    Only the first sub-block that still has masks is touched, as in the engine.
    """
    sub = decoder.options.sub_block_size
    first = int(masked.nonzero()[0]) // sub * sub  # the current sub-block is first .. first + sub - 1
    rows = slice(max(first - 1, 0), first + sub - 1)
    decoder.unmask(canvas, masked, logits[rows], first_position=rows.start + 1)
    return not bool(masked.any())
