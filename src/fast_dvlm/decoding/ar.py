"""Greedy autoregressive decoding: one token per pass, the baseline every other mode must match."""

from __future__ import annotations

import torch

from .base import Decoder
from .session import Session


class ARDecoder(Decoder):
    name = "ar"

    def step(self, session: Session) -> list[int]:
        start = session.cache_len
        seed = torch.tensor([session.tokens[-1]])
        logits = session.forward(seed, torch.tensor([start]))
        return [int(logits[-1].argmax())]
