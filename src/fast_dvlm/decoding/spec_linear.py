"""Lossless self-speculative decoding, linear form: a draft pass and a verify pass per block (SPEC §2.3)."""

from __future__ import annotations

import torch

from .base import Decoder
from .session import Session


def accepted_length(draft: torch.Tensor, ar: torch.Tensor) -> int:
    """How many draft tokens the AR predictions confirm: the longest run with `draft[i+1] == ar[i]`."""
    mismatch = (draft[1:] != ar[: draft.shape[0] - 1]).nonzero()
    return int(mismatch[0]) if mismatch.numel() else draft.shape[0] - 1


class SpecLinearDecoder(Decoder):
    """The model drafts a whole block in one bidirectional pass, then checks it as an AR model in
    one causal pass. The confirmed prefix plus the first AR correction are committed, so the output
    is exactly the model's greedy AR output, in fewer passes."""

    name = "spec-linear"

    def step(self, session: Session, budget: int) -> list[int]:
        return draft_and_verify(self, session)


def draft_and_verify(decoder: Decoder, session: Session) -> list[int]:
    """One linear self-speculation step after the `p` pending tokens (p = 1: the seed)."""
    start, p = session.cache_len, len(session.pending)
    draft = decoder.masked_block(session.pending, session.device)
    draft[p:] = decoder.denoise_logits(session, draft)[p - 1 :].argmax(-1)  # stays on the device
    ar = decoder.causal_logits(session, draft).argmax(-1)  # [B]; ar[i] follows draft[i]
    draft, ar = torch.stack([draft, ar]).cpu()  # the step's one host sync: what to keep depends on it
    accepted = accepted_length(draft[p - 1 :], ar[p - 1 :])
    session.rollback(start + p + accepted)  # keep the pending tokens and the confirmed drafts
    return draft[p : p + accepted].tolist() + [int(ar[p - 1 + accepted])]
