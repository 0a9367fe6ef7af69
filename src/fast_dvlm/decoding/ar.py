"""Greedy autoregressive decoding: one token per pass, the baseline every other mode must match."""

from __future__ import annotations

from .base import Decoder, DecodeState, Passes
from .session import Session


class ARDecoder(Decoder):
    name = "ar"
    needs_mask_token = False

    def step(self, session: Session, state: DecodeState, budget: int) -> Passes:
        return (yield from self.next_token(session))
