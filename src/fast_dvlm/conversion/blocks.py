"""Blocks inside responses, with auto-truncation at turn boundaries (SPEC §1.1).

Each prompt segment is one unit; each response is cut into blocks of B tokens counted from its own
start, the last one cut at the response's end. Unit ids increase along the sequence, so "earlier
block" is a plain comparison of ids, and no block ever mixes two turns.
"""

from __future__ import annotations

import torch


def segment_ids(response: torch.Tensor) -> torch.Tensor:
    """`[L]` index of the run (prompt or response) each token belongs to, counted from 0."""
    change = torch.ones_like(response)
    change[1:] = response[1:] != response[:-1]
    return change.long().cumsum(0) - 1


def block_layout(response: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block id `[L]` of every token, and `[L]` True at the first token of each response block.

    A block's first token is never masked: at inference it is the seed, predicted autoregressively
    by the clean pass before the block, and only the rest of the block is denoised.
    """
    segment = segment_ids(response)
    index = torch.arange(response.shape[0])
    segment_start = torch.zeros(int(segment.max()) + 1, dtype=torch.long)
    segment_start.scatter_reduce_(0, segment, index, reduce="amin", include_self=False)
    offset = index - segment_start[segment]  # position inside the segment
    within = torch.where(response, offset // block_size, torch.zeros_like(offset))
    key = segment * (response.shape[0] + 1) + within
    blocks = torch.unique_consecutive(key, return_inverse=True)[1]
    block_start = response & (offset % block_size == 0)
    return blocks, block_start
