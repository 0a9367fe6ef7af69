"""Blocks inside responses, with auto-truncation at turn boundaries.

Each prompt segment is one unit; each response is cut into blocks of B tokens counted from its own
start, the last one cut at the response's end. Unit ids increase along the sequence, so "earlier
block" is a plain comparison of ids, and no block ever mixes two turns.

Without auto-truncation (the paper's ablation) blocks are counted once, from the first answer token
to the sequence's end: a block may hold the end of one answer, the next question and the start of
the next answer, so a noisy answer token sees the turn that follows it (the leak auto-truncation
stops). A single-turn sample is cut the same either way.
"""

from __future__ import annotations

import torch


def segment_ids(response: torch.Tensor) -> torch.Tensor:
    """`[L]` index of the run (prompt or response) each token belongs to, counted from 0."""
    change = torch.ones_like(response)
    change[1:] = response[1:] != response[:-1]
    return change.long().cumsum(0) - 1


def block_layout(
    response: torch.Tensor, block_size: int, auto_truncate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block id `[L]` of every token, and `[L]` True at the first token of each response block.

    A block's first token is never masked: at inference it is the seed, predicted autoregressively
    by the clean pass before the block, and only the rest of the block is denoised. Without
    auto-truncation each answer's first token stays a seed too, wherever its block starts.
    """
    length = response.shape[0]
    segment = segment_ids(response)
    index = torch.arange(length)
    segment_start = torch.zeros(int(segment.max()) + 1, dtype=torch.long)
    segment_start.scatter_reduce_(0, segment, index, reduce="amin", include_self=False)
    offset = index - segment_start[segment]  # position inside the segment
    if auto_truncate or not bool(response.any()):
        windowed, unit, counted = response, segment, offset
    else:  # one run of blocks from the first answer token on, over later prompts and answers alike
        first = int(response.nonzero()[0])
        windowed = index >= first
        unit = torch.where(windowed, segment[first], segment)
        counted = index - first
    within = torch.where(windowed, counted // block_size, torch.zeros_like(counted))
    key = unit * (length + 1) + within
    blocks = torch.unique_consecutive(key, return_inverse=True)[1]
    block_start = response & ((counted % block_size == 0) | (offset == 0))
    return blocks, block_start
