"""Committed token ids -> text pieces that are safe to show at once: what the server streams and
`DiffusionVLM.stream_text` yields. Special tokens (the stop token) are left out, as in the answer's text.

A byte-level tokenizer can commit half of a character, and a stop string can arrive split over two
blocks, so each piece holds back a trailing undecodable run and anything that could still become a
stop string. The pieces of a stream concatenate to exactly the text a non-streamed request returns:
the whole answer decoded at once, cut before the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"  # what decoding gives for the bytes of a character not yet complete


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.hold = max(map(len, self.stop), default=1) - 1  # a stop string minus its last char
        self.token_ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.stopped = False  # a stop string was found: nothing follows

    def push(self, token_ids: Sequence[int]) -> str:
        """Take newly committed tokens; return the text that can be sent now (maybe empty)."""
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._take(text, cut)
        return self._take(text, len(text.rstrip(INCOMPLETE)) - self.hold)

    def flush(self) -> str:
        """The answer is complete: everything not yet sent."""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._stop_at(text)
        return self._take(text, len(text) if cut is None else cut)

    def _stop_at(self, text: str) -> int | None:
        return min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=None)

    def _take(self, text: str, end: int) -> str:
        end = max(end, self.sent)  # what was sent stays sent (and a negative end is not from the back)
        piece = text[self.sent : end]
        self.sent = end
        return piece
