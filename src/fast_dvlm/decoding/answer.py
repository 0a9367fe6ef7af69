"""One answer being decoded (`Answer`): a (shared, stateless) decoder, the answer's session (its cache,
positions and committed tokens) and its decoding state (its trace, a carried draft).

`advance` runs the answer's decoding up to the next pass it needs; whoever holds the answer runs
that pass and hands the logits back with `reply`. `stream` does so one pass at a time, for
`generate` and `stream`; a `Batch` (batch.py) runs many answers' passes as one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .base import Decoder, Pass, Passes
from .session import Session


def run_alone(passes: Passes, session: Session) -> Any:
    """Drive a step, or one of `Decoder`'s block passes, with each pass run on `session` alone; its result."""
    try:
        wanted = next(passes)
        while True:
            wanted = passes.send(session.forward(wanted.ids, wanted.seq, wanted.mask, wanted.rows))
    except StopIteration as done:
        return done.value


class Answer:
    def __init__(self, decoder: Decoder, session: Session, first_logits: torch.Tensor | None) -> None:
        self.decoder = decoder
        self.session = session
        self.state = decoder.State()
        self.first_logits = first_logits  # the prefill's prediction of the first token (None: a pending tail)
        self.done = False  # the answer is complete (or was closed)
        self._decoding = decoder.run(session, self.state, first_logits)
        self._reply: torch.Tensor | None = None

    def advance(self) -> tuple[list[list[int]], Pass | None]:
        """Decode up to the next pass this answer needs: the chunks committed on the way, and that
        pass (None: the answer is complete)."""
        chunks = []
        while True:
            try:
                wanted = self._decoding.send(self._reply)
            except StopIteration:
                self.done = True
                return chunks, None
            self._reply = None
            if isinstance(wanted, Pass):
                return chunks, wanted
            chunks.append(wanted)

    def reply(self, logits: torch.Tensor) -> None:
        """The logits of the pass `advance` asked for."""
        self._reply = logits

    def close(self) -> None:
        """Stop decoding here (a cancelled request); the committed tokens stay readable."""
        self._decoding.close()
        self.done = True

    def stream(self) -> Iterator[list[int]]:
        """The committed chunks, each pass run alone on the session, as it comes."""
        try:
            while True:
                chunks, wanted = self.advance()
                yield from chunks
                if wanted is None:
                    return
                self.reply(self.session.forward(wanted.ids, wanted.seq, wanted.mask, wanted.rows))
        finally:
            self.close()
