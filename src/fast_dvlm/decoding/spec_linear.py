"""Lossless self-speculative decoding, linear form: a draft pass and a verify pass per block."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from .base import DecodeOptions, Decoder, DecodeState, Passes
from .cost import answer_pass_cost
from .policy import SHORTEST_DRAFT, draft_length, drafts_worth_verifying, fit_draft, verify_count
from .session import Session

FIRST_STEPS_KEPT = 32
AR_RUN = 8  # AR steps an answer takes in a row before it tries a draft again (its text may turn predictable)


def accepted_length(draft: torch.Tensor, ar: torch.Tensor) -> int:
    """How many draft tokens the AR predictions confirm: the longest run with `draft[i+1] == ar[i]`."""
    mismatch = (draft[1:] != ar[: draft.shape[0] - 1]).nonzero()
    return int(mismatch[0]) if mismatch.numel() else draft.shape[0] - 1


class SpecLinearDecoder(Decoder):
    """The model drafts a whole block in one bidirectional pass, then checks it as an AR model in
    one causal pass. The confirmed prefix plus the first AR correction are committed, so the output
    is exactly the model's greedy AR output, in fewer passes. With `draft_policy="auto"` the causal
    pass checks only the drafts worth checking, and a step drafts nothing (one AR pass) where that is
    faster (policy.py); nothing else changes."""

    name = "spec-linear"

    @dataclass
    class State(DecodeState):
        accepted: list[int] = field(default_factory=list)  # drafts each step kept (doubled: all kept)
        ar_run: int = 0  # AR steps taken in a row since the last draft

    def __init__(self, options: DecodeOptions) -> None:
        super().__init__(options)
        # what the first steps of recent answers kept: the next answer's first draft is sized by
        # them (one decoder serves a whole `generate_batch`; a fresh one drafts a whole block first)
        self.first_steps: deque[int] = deque(maxlen=FIRST_STEPS_KEPT)

    def step(self, session: Session, state: State, budget: int) -> Passes:
        size, p = self.options.block_size, len(session.pending)
        if self.sizes_steps:
            history = state.accepted or list(self.first_steps)
            size = draft_length(history, p, size, answer_pass_cost(session))
            if size == 0 and state.ar_run < AR_RUN:
                state.ar_run += 1
                return (yield from self.next_token(session))
            size = size or fit_draft(SHORTEST_DRAFT, p, self.options.block_size)  # the retry: the shortest
            state.ar_run = 0
        committed = yield from draft_and_verify(self, session, budget, size)
        kept = len(committed) - 1
        record = 2 * kept if kept >= size - p else kept
        if not state.accepted:  # the answer's first draft (AR steps before it record nothing)
            self.first_steps.append(record)
        state.accepted.append(record)
        return committed


def draft_and_verify(decoder: Decoder, session: Session, budget: int, size: int | None = None) -> Passes:
    """One linear self-speculation step after the `p` pending tokens (p = 1: the seed), drafting a
    block of `size` tokens (default: the block size)."""
    start, p = session.cache_len, len(session.pending)
    size = decoder.options.block_size if size is None else size
    auto = decoder.sizes_steps
    if auto and budget <= 1:  # no draft could be used: the step is one AR pass
        return (yield from decoder.next_token(session))
    draft = decoder.masked_block(session.pending, session.device, size)
    logits = (yield from decoder.denoise_logits(session, draft))[p - 1 :]  # [B - p, V]: the drafted positions
    draft[p:] = logits.argmax(-1)  # stays on the device
    verify = size
    if auto:
        confidence = logits.float().softmax(-1).amax(-1)
        drafts, confidence = draft[p:].cpu().tolist(), confidence.cpu().tolist()  # the policy's host read
        cost = answer_pass_cost(session)
        most = drafts_worth_verifying(drafts, decoder.options.stop_ids, budget)
        verify = p + verify_count(confidence, lambda m: cost(size) + cost(p + m), most)
    ar = (yield from decoder.causal_logits(session, draft[:verify])).argmax(
        -1
    )  # [verify]; ar[i] follows draft[i]
    draft, ar = torch.stack([draft[:verify], ar]).cpu()  # the verdict's host sync: what to keep depends on it
    accepted = accepted_length(draft[p - 1 :], ar[p - 1 :])
    session.rollback(start + p + accepted)  # keep the pending tokens and the confirmed drafts
    return draft[p : p + accepted].tolist() + [int(ar[p - 1 + accepted])]
