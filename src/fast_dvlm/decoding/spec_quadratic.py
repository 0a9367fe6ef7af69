"""Lossless self-speculative decoding, quadratic form: verify and re-draft in one pass.

One pass holds the current draft d_0..d_{B-1} (d_0, the seed, is exact) followed by B groups of
B-1 masks. Group j sits at positions L+j+1 .. L+j+B-1, right after d_j:

- d_j sees the cache and d_0..d_j (clean, causal): its logit is the AR prediction ar_j, which
  verifies d_{j+1} and is the first token of the next draft should d_0..d_j be accepted;
- group j's masks see the cache, d_0..d_j and each other (a noisy block whose context ends at d_j):
  they draft the B-1 tokens after ar_j.

So after the pass, for any accepted length a, the next draft is already there: [ar_{a-1}, group a-1].
The d's come first in the pass so that keeping their keys is a plain cache crop. Each group is
[d_j, MASK x (B-1)], the same B-token block the model was trained to denoise; B^2 tokens per pass.

With `draft_policy="auto"` a pass holds only the first v drafts and their v groups (vB tokens),
v chosen by the policy (policy.py) from the draft's confidences, which the previous pass's group
gave; the accepted length is at most v, so the next draft is still always there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..conversion.attention import CLEAN, NOISY, Tokens
from .base import Decoder, DecodeState, Pass, Passes
from .cost import answer_pass_cost
from .policy import drafts_worth_verifying, verify_count
from .session import Session
from .spec_linear import accepted_length, draft_and_verify


class SpecQuadraticDecoder(Decoder):
    name = "spec-quadratic"

    @dataclass
    class State(DecodeState):
        draft: torch.Tensor | None = None  # [B] on the model's device, draft[0] is the seed
        seed: int | None = None  # draft[0], known on the host without a sync
        confidence: list[float] | None = None  # of draft[1:], where the policy needs it

    def step(self, session: Session, state: State, budget: int) -> Passes:
        size = self.options.block_size
        auto = self.sizes_steps
        if len(session.pending) > 1:  # a pending prompt tail: its first block is drafted linearly
            state.draft = None
            return (yield from draft_and_verify(self, session, budget))
        if state.draft is None or state.seed != session.pending[0]:
            state.draft = self.masked_block(session.pending, session.device)
            logits = yield from self.denoise_logits(session, state.draft)
            state.draft[1:] = logits.argmax(-1)
            if auto:
                state.confidence = logits.float().softmax(-1).amax(-1).cpu().tolist()
        verify = size
        if auto:  # v drafts d_0 .. d_{v-1}: the seed and v - 1 drafts
            cost = answer_pass_cost(session)
            most = drafts_worth_verifying(state.draft[1:].cpu().tolist(), self.options.stop_ids, budget)
            verify = 1 + verify_count(state.confidence, lambda m: cost((m + 1) * size), most)
        start = session.cache_len
        tokens, ids = self.layout(start, size, session.device, verify)
        ids[:verify] = state.draft[:verify]
        logits = yield Pass(ids, tokens.pos, self.block_mask(session, tokens))  # [vB, V]
        predicted = logits.argmax(-1)
        ar = predicted[:verify]  # ar[j] follows d_j
        redrafts = predicted[verify:].view(verify, size - 1)  # group j's drafts after ar[j]
        draft, ar_host = torch.stack([state.draft[:verify], ar]).cpu()  # the step's one host sync
        accepted = accepted_length(draft, ar_host) + 1  # d_0 .. d_{accepted-1} are exact
        session.rollback(start + accepted)
        committed = draft[1:accepted].tolist() + [int(ar_host[accepted - 1])]
        state.draft = torch.cat([ar[accepted - 1 : accepted], redrafts[accepted - 1]])
        if auto:  # the chosen group's confidences, for the next step's policy
            group = logits[verify:].view(verify, size - 1, -1)[accepted - 1]
            state.confidence = group.float().softmax(-1).amax(-1).cpu().tolist()
        state.seed = committed[-1]
        return committed

    def layout(
        self, start: int, size: int, device: torch.device | str = "cpu", verify: int | None = None
    ) -> tuple[Tokens, torch.Tensor]:
        """Stream, position and block of the tokens of one pass (the first `verify` drafts, default
        all B, and as many groups of B - 1 masks), and their ids (masks filled), built on `device`."""
        verify = size if verify is None else verify
        j = torch.arange(verify, device=device)
        drafts = Tokens.make(CLEAN, start + j, 2 * j)  # d_j: clean, its own unit
        offsets = torch.arange(1, size, device=device)
        group_pos = (start + j[:, None] + offsets[None, :]).flatten()
        group_block = (2 * j + 1)[:, None].expand(verify, size - 1).flatten()  # after d_j, before d_{j+1}
        groups = Tokens.make(NOISY, group_pos, group_block)
        ids = torch.full((verify * size,), self.options.mask_id, dtype=torch.long, device=device)
        return drafts + groups, ids
