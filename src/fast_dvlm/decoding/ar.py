"""Greedy autoregressive decoding: one token per pass, the baseline every other mode must match."""

from __future__ import annotations

import torch

from .base import Decoder
from .session import Session


class ARDecoder(Decoder):
    name = "ar"
    needs_mask_token = False

    def step(self, session: Session, budget: int) -> list[int]:
        start = session.cache_len
        logits = session.forward(torch.tensor([session.tokens[-1]]), torch.tensor([start]))
        return [int(logits[-1].argmax())]
