"""Many answers decoded together: each round, every answer runs up to the next pass it needs, and
those passes run as one batched forward (`generate_batch`, the server's continuous batching).

Each answer keeps its own cache length, positions and block ids (its `Session`), in its own row of
one shared lean cache (decoding/lean.py): nothing is shifted or left-padded, so token i of an
answer sits at the same index and position as when it is decoded alone. A round's passes may have
different lengths (a draft and a verify pass, a block and a 1-token pass): they are padded to the
longest, and each row's mask, from the decoder's own (or causal), hides every key past the row's
own length. Answers join between rounds, into free rows (those joining together prefilled as one
padded pass, `Batch.prefill`), and leave when they are complete or cancelled (the last row moves
into the gap, so the rows in use stay 0 .. r-1 and a pass never computes a departed answer).

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

from ..models.family import Family, LMInputs
from ..settings import CleanAttention
from .answer import Answer
from .base import Pass
from .lean import LeanSlot, LeanTextModel
from .session import PromptPass, Session, lean_runs, rope_position_ids


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

    def session(self, clean_attention: CleanAttention = "causal", later: int = 0) -> Session:
        """A fresh session for the next answer to join, in the next free row (prefill it, then `join`);
        `later=k`: in the row k after it, for the k+1-th of several answers joining together."""
        slot = None if self.lean is None else self.lean.slot(len(self.answers) + later)
        return Session(self.model, self.family, self.use_cache, clean_attention, self.engine, slot)

    def prefill(
        self,
        sessions: list[Session],
        inputs: list[LMInputs],
        prompt_ids: list[torch.Tensor],
        aligned_blocks: list[int | None],
    ) -> list[torch.Tensor | None]:
        """`Session.prefill` of several joining answers (their sessions from `session`, each with its
        own `aligned_block`; `join_many` them after): the prompts on lean rows run as one padded pass
        (`prefill_rows`), the rest alone (a DeepStack prompt, which runs through transformers'
        forward, goes to the last rows; or no lean path). Each row's positions are its own prompt's
        (M-RoPE included), as alone."""
        order = list(range(len(sessions)))
        if self.lean is not None:  # the rows that run alone go last, so the others are consecutive
            order.sort(key=lambda k: bool(inputs[k].extra))
            for row, k in enumerate(order, start=len(self.answers)):
                sessions[k].lean.row = row
        out: list[torch.Tensor | None] = [None] * len(sessions)
        together: list[tuple[int, PromptPass]] = []  # consecutive rows still to run as one pass

        def flush() -> None:
            if len(together) == 1:  # alone: exactly `generate`'s prefill
                k = together[0][0]
                out[k] = sessions[k].prefill(inputs[k], prompt_ids[k], aligned_blocks[k])
            elif together:
                rows = [sessions[k] for k, _ in together]
                logits = prefill_rows(self.lean, rows, [p for _, p in together])
                for (k, _), row in zip(together, logits, strict=True):
                    out[k] = row
            together.clear()

        for k in order:
            session, prompt, ids, aligned = sessions[k], inputs[k], prompt_ids[k], aligned_blocks[k]
            batched = self.lean is not None and not prompt.extra
            own = session.prompt(prompt, ids, aligned) if batched else None
            if own is not None:
                together.append((k, own))
                continue
            flush()  # this row breaks the run of consecutive rows
            if not batched:  # (a batched row without a pass holds nothing but a pending tail)
                out[k] = session.prefill(prompt, ids, aligned)
        flush()
        return out

    def join_many(self, answers: list[Answer]) -> None:
        """`join` answers prefilled together (`prefill`, which may have reordered their rows)."""
        for answer in sorted(answers, key=lambda a: 0 if self.lean is None else a.session.lean.row):
            self.join(answer)

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
        if self.lean is not None:  # the drafting policy weighs each answer's share of a batched pass
            for answer in self.answers:
                answer.session.batch_rows = len(self.answers)
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
    mask = row_masks(lean, starts, counts, [p.mask for p in passes], m, end)
    hidden = lean.forward_rows(sessions[0].embed_tokens(ids), cos, sin, mask, counts)  # [r, m, D]
    rows = []
    for b, (session, p, n) in enumerate(zip(sessions, passes, counts, strict=True)):
        session.nfe += 1
        session.record_pass(n)
        rows.append(hidden[b, :n][p.rows])
    logits = sessions[0].lm_head(torch.cat(rows))  # one head over every row asked for
    return list(logits.split([r.shape[0] for r in rows]))


def row_masks(
    lean: LeanTextModel,
    starts: list[int],
    counts: list[int],
    masks: list[torch.Tensor | None],
    m: int,
    end: int,
) -> torch.Tensor:
    """The additive `[r, 1, m, end]` mask of a batched pass: row b's own `masks[b]`
    (`[1, 1, n, start + n]`) or causal. Either way the keys past the row's new length stay
    hidden: causally, every one of them lies after each of the row's new positions."""
    mask = lean.causal_mask(torch.tensor(starts), m, end)
    for b, (own, start, n) in enumerate(zip(masks, starts, counts, strict=True)):
        if own is not None:
            mask[b, 0, :n, : start + n] = own[0, 0]
    return mask


def prefill_rows(
    lean: LeanTextModel, sessions: list[Session], prompts: list[PromptPass]
) -> list[torch.Tensor | None]:
    """The prompts of joining answers as one pass, padded to the longest: `sessions` hold consecutive
    empty lean rows. Each row's rotary cos/sin come from its own prompt's position ids (M-RoPE rows
    as the model's rotary embedding gives them alone); returns `Session.prefilled`'s logits per row."""
    first = sessions[0].lean.row
    counts = [p.inputs.inputs_embeds.shape[1] for p in prompts]
    r, m = len(prompts), max(counts)
    embeds = pad_sequence([p.inputs.inputs_embeds[0] for p in prompts], batch_first=True)  # [r, m, D]
    cos = embeds.new_zeros(r, 1, m, lean.head_dim)  # padding: rotation by 0, never read
    sin = embeds.new_zeros(r, 1, m, lean.head_dim)
    for b, (session, p, n) in enumerate(zip(sessions, prompts, counts, strict=True)):
        positions = session.family.lm_position_ids(p.inputs.position_ids)
        cos[b, :, :n], sin[b, :, :n] = (t[0] for t in lean.prompt_rope(embeds[b : b + 1, :n], positions))
    mask = row_masks(lean, [0] * r, counts, [p.mask for p in prompts], m, m)
    hidden = lean.forward_rows(embeds, cos, sin, mask, counts, first)  # [r, m, D]
    last = torch.stack([hidden[b, n - 1] for b, n in enumerate(counts)])  # [r, D]
    wanted = []  # rows whose last position predicts the first answer token
    for b, (session, p) in enumerate(zip(sessions, prompts, strict=True)):
        session.nfe += 1
        if session.prefilled(p):
            wanted.append(b)
    out: list[torch.Tensor | None] = [None] * r
    if wanted:
        for b, row in zip(wanted, sessions[0].lm_head(last[wanted]), strict=True):  # one head for all
            out[b] = row
    return out
