"""Lossless self-speculative decoding, quadratic form: verify and re-draft in one pass (SPEC §2.4).

One pass holds the current draft d_0..d_{B-1} (d_0, the seed, is exact) followed by B groups of
B-1 masks. Group j sits at positions L+j+1 .. L+j+B-1, right after d_j:

- d_j sees the cache and d_0..d_j (clean, causal): its logit is the AR prediction ar_j, which
  verifies d_{j+1} and is the first token of the next draft should d_0..d_j be accepted;
- group j's masks see the cache, d_0..d_j and each other (a noisy block whose context ends at d_j):
  they draft the B-1 tokens after ar_j.

So after the pass, for any accepted length a, the next draft is already there: [ar_{a-1}, group a-1].
The d's come first in the pass so that keeping their keys is a plain cache crop. Each group is
[d_j, MASK x (B-1)], the same B-token block the model was trained to denoise; B^2 tokens per pass.
"""

from __future__ import annotations

import torch

from ..conversion.attention import CLEAN, NOISY, Tokens
from .base import Decoder
from .session import Session
from .spec_linear import accepted_length, draft_and_verify


class SpecQuadraticDecoder(Decoder):
    name = "spec-quadratic"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draft: torch.Tensor | None = None  # [B], draft[0] is the seed

    def step(self, session: Session, budget: int) -> list[int]:
        size = self.options.block_size
        if len(session.pending) > 1:  # a pending prompt tail: its first block is drafted linearly
            self.draft = None
            return draft_and_verify(self, session)
        if self.draft is None or int(self.draft[0]) != session.pending[0]:
            self.draft = self.masked_block(session.pending)
            self.draft[1:] = self.denoise_logits(session, self.draft).argmax(-1).cpu()
        start = session.cache_len
        tokens, ids = self.layout(start, size)
        ids[:size] = self.draft
        logits = session.forward(ids, tokens.pos, self.block_mask(session, tokens))
        ar = logits[:size].argmax(-1).cpu()  # [B]; ar[j] follows d_j
        redrafts = logits[size:].argmax(-1).cpu().view(size, size - 1)  # group j's drafts after ar[j]
        accepted = accepted_length(self.draft, ar) + 1  # d_0 .. d_{accepted-1} are exact
        session.rollback(start + accepted)
        committed = self.draft[1:accepted].tolist() + [int(ar[accepted - 1])]
        self.draft = torch.cat([ar[accepted - 1 : accepted], redrafts[accepted - 1]])
        return committed

    def layout(self, start: int, size: int) -> tuple[Tokens, torch.Tensor]:
        """Stream, position and block of the B^2 tokens of one pass, and their ids (masks filled)."""
        j = torch.arange(size)
        drafts = Tokens.make(CLEAN, start + j, 2 * j)  # d_j: clean, its own unit
        offsets = torch.arange(1, size)
        group_pos = (start + j[:, None] + offsets[None, :]).flatten()
        group_block = (2 * j + 1)[:, None].expand(size, size - 1).flatten()  # after d_j, before d_{j+1}
        groups = Tokens.make(NOISY, group_pos, group_block)
        ids = torch.full((size * size,), self.options.mask_id, dtype=torch.long)
        return drafts + groups, ids
