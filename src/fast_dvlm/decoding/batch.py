"""Many answers decoded together: each round, every answer runs up to the next pass it needs, and
those passes run as one batched forward (`generate_batch`, the server's continuous batching).

Each answer keeps its own cache length, positions and block ids (its `Session`), in its own row of
one shared lean cache (decoding/lean.py): nothing is shifted or left-padded, so token i of an
answer sits at the same index and position as when it is decoded alone. A round's passes may have
different lengths (a draft and a verify pass, a block and a 1-token pass): they are padded to the
longest, and each row's mask, from the decoder's own (or causal), hides every key past the row's
own length. Answers join between rounds (prefilled alone, into a free row) and leave when they are
complete or cancelled (the last row moves into the gap, so the rows in use stay 0 .. r-1 and a pass
never computes a departed answer).

Exactness: a row's attention reads its own keys only and every other layer works token by token,
so an answer's logits are those of the same pass run alone, up to float rounding of the batched
kernels (a different shape may sum in a different order): the lossless modes stay greedy AR's answers
(tests/test_batch.py), and with the same shapes a row's output does not depend on its batch-mates at
all. A round with one pass runs it exactly as `generate` does. Where the lean path does not run
(`engine="transformers"`, `use_cache=False`, a model it does not support) the passes of a round run
one after another: the same answers as alone, without the speed.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from ..models.family import Family
from ..settings import CleanAttention
from .answer import Answer
from .base import Pass
from .lean import LeanSlot, LeanTextModel
from .session import Session, lean_runs, rope_position_ids


class Batch:
    def __init__(
        self, model: PreTrainedModel, family: Family, use_cache: bool = True, engine: str = "lean"
    ) -> None:
        self.model, self.family = model, family
        self.use_cache, self.engine = use_cache, engine
        text_model = family.language_model(model)
        self.lean: LeanTextModel | None = None  # the shared rows; None: passes run one by one
        if lean_runs(text_model, use_cache, engine):
            self.lean = LeanTextModel(text_model, partial(rope_position_ids, family))
        self.answers: list[Answer] = []  # in row order: answers[b] holds lean row b

    def __len__(self) -> int:
        return len(self.answers)

    def session(self, clean_attention: CleanAttention = "causal") -> Session:
        """A fresh session for the next answer to join, in the next free row (prefill it, then `join`)."""
        slot = None if self.lean is None else self.lean.slot(len(self.answers))
        return Session(self.model, self.family, self.use_cache, clean_attention, self.engine, slot)

    def join(self, answer: Answer) -> None:
        """Add a prefilled answer (its session from `session`, nothing joined in between)."""
        if self.lean is not None and answer.session.lean.row != len(self.answers):
            raise ValueError("an answer joins in the row its session was given")
        self.answers.append(answer)

    def leave(self, answer: Answer) -> None:
        """Drop an answer (complete or cancelled); the last row moves into its place."""
        if not answer.done:
            answer.close()
        i = self.answers.index(answer)
        last = self.answers.pop()
        if last is not answer:
            self.answers[i] = last
            if self.lean is not None:
                slot: LeanSlot = last.session.lean
                self.lean.move(slot.row, i)
                slot.row = i

    def round(self) -> list[tuple[Answer, list[list[int]]]]:
        """Every answer decodes up to its next pass, then those passes run. Returns each answer's
        chunks committed this round; an answer that completed has left (`answer.done`)."""
        out = []
        for answer in list(self.answers):
            chunks, wanted = answer.advance()
            out.append((answer, chunks, wanted))
            if wanted is None:
                self.leave(answer)
        wanted = {id(s): p for s, _, p in out if p is not None}
        self.run([(s, wanted[id(s)]) for s in self.answers])  # row order
        return [(s, chunks) for s, chunks, _ in out]

    def run(self, passes: list[tuple[Answer, Pass]]) -> None:
        """Run each answer's pass and hand it its logits: together on the lean rows, else alone."""
        if self.lean is None or len(passes) == 1:
            for answer, p in passes:
                answer.reply(answer.session.forward(p.ids, p.seq, p.mask, p.rows))
        elif passes:
            logits = forward_rows(self.lean, [s.session for s, _ in passes], [p for _, p in passes])
            for (answer, _), rows in zip(passes, logits, strict=True):
                answer.reply(rows)


def forward_rows(lean: LeanTextModel, sessions: list[Session], passes: list[Pass]) -> list[torch.Tensor]:
    """One batched pass: `passes[b]` for `sessions[b]`, which holds lean row b. Each session counts
    the pass and records its block id as its own pass would; returns each pass's logits of its rows."""
    device = lean.device
    counts = [p.ids.shape[0] for p in passes]
    starts = [s.cache_len for s in sessions]
    m, end = max(counts), max(s + n for s, n in zip(starts, counts, strict=True))
    ids = pad_sequence([p.ids.to(device) for p in passes], batch_first=True)  # [r, m]
    positions = pad_sequence(
        [p.seq.to(device) + s.position_offset for s, p in zip(sessions, passes, strict=True)],
        batch_first=True,
    )  # [r, m], padding at position 0
    upto = max(
        s + n + session.position_offset for s, n, session in zip(starts, counts, sessions, strict=True)
    )
    cos, sin = lean.rope(positions, upto)  # [r, 1, m, d]
    mask = lean.causal_mask(torch.tensor(starts), m, end)  # [r, 1, m, end]; rows with a mask of their own:
    for b, (p, start, n) in enumerate(zip(passes, starts, counts, strict=True)):
        if p.mask is not None:
            mask[b, 0, :n, : start + n] = p.mask[0, 0]
            mask[b, 0, :n, start + n :] = torch.finfo(mask.dtype).min
    hidden = lean.forward_rows(sessions[0].embed_tokens(ids), cos, sin, mask, counts)  # [r, m, D]
    rows = []
    for b, (session, p, n) in enumerate(zip(sessions, passes, counts, strict=True)):
        session.nfe += 1
        session.record_pass(n)
        rows.append(hidden[b, :n][p.rows])
    logits = sessions[0].lm_head(torch.cat(rows))  # one head over every row asked for
    return list(logits.split([r.shape[0] for r in rows]))
