"""The decoding interface: the base class owns the loop; each algorithm implements `step`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import FastDVLMError
from ..settings import validate_block_settings
from .session import Session


@dataclass(frozen=True)
class DecodeOptions:
    """What every algorithm is given; block settings are ignored by `ar`."""

    max_new_tokens: int
    stop_ids: frozenset[int]
    mask_id: int | None = None
    block_size: int = 32
    sub_block_size: int = 8
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FastDVLMError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        validate_block_settings(self.block_size, self.sub_block_size, self.threshold)


class Decoder(ABC):
    """A decoding algorithm. `step` commits the next tokens after `session.tokens[-1]`.

    Invariant between steps: the cache holds the prompt and every committed token but the last
    one (the "seed"), whose successor is what `step` decodes next.
    """

    name: ClassVar[str]

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options

    @abstractmethod
    def step(self, session: Session) -> list[int]:
        """Decode and return the tokens that follow the seed, leaving the invariant true."""

    def run(self, session: Session, first_logits: torch.Tensor) -> Iterator[list[int]]:
        """Yield committed tokens chunk by chunk, up to and including the first stop token."""
        chunk = [int(first_logits.argmax())]  # the prefill's AR prediction is the first seed
        while True:
            chunk = chunk[: self.options.max_new_tokens - len(session.tokens)]
            stop_at = next((i for i, t in enumerate(chunk) if t in self.options.stop_ids), None)
            if stop_at is not None:
                chunk = chunk[: stop_at + 1]
            session.tokens.extend(chunk)
            yield chunk
            if stop_at is not None or len(session.tokens) >= self.options.max_new_tokens:
                return
            chunk = self.step(session)
            session.trace.append(len(chunk))
