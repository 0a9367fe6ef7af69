"""What a pass costs and what decoding gains: the pass-cost curve, the speed-up each mode should give
at a model size (from the curve and the demo's measured acceptance), and a timed decode that checks it.

A mode's step commits some tokens for some passes of given sizes. With c(n) the cost of an n-token
pass over the cache, a schedule of steps is expected to run `Σ tokens · c(1) / Σ c(pass sizes)` times
as fast as AR. The timed decode runs fast-dvlm's own decoders (Session, masks, rollbacks, host syncs)
on a random-weight model and forces the same schedule: random weights accept nothing by themselves.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import cycle
from unittest import mock

import torch
from transformers import PreTrainedModel

from fast_dvlm.decoding import DecodeOptions, Session, make_decoder
from fast_dvlm.decoding.answer import Answer
from fast_dvlm.decoding.diffusion import BlockDiffusionDecoder
from fast_dvlm.models.family import LMInputs
from fast_dvlm.models.registry import get_family

from .models import sync

TEXT = get_family("qwen2")


@torch.inference_mode()
def pass_costs(
    model: PreTrainedModel, counts: list[int], context: int, repeats: int, device: str
) -> dict[int, float]:
    """Median milliseconds of one pass of n new tokens over a `context`-token cache (all rows' logits)."""
    session = Session(model, TEXT)
    vocab = model.config.vocab_size
    session.forward(torch.randint(0, vocab, (context,), device=device), session.next_positions(context))
    costs = {}
    for n in counts:
        ids, seq = torch.randint(0, vocab, (n,), device=device), session.next_positions(n)
        times = []
        for _ in range(repeats + 1):  # the first run warms up and is dropped
            sync(device)
            start = time.perf_counter()
            session.forward(ids, seq)
            sync(device)
            times.append(time.perf_counter() - start)
            session.rollback(context)
        costs[n] = 1000 * statistics.median(times[1:])
    return costs


@dataclass(frozen=True)
class Schedule:
    """How one mode decodes, fixed in advance: the bench label it stands for, the decoder and its
    settings, and the tokens each step commits (cycled). For diffusion, `per_pass` positions are
    unmasked by each denoising pass instead."""

    label: str
    mode: str
    block_size: int = 1
    sub_block_size: int = 1
    accepted: tuple[int, ...] = (1,)  # tokens committed per step, speculative modes
    per_pass: int = 1  # diffusion: positions unmasked per denoising pass

    def steps(self, n_steps: int) -> Iterator[tuple[int, list[int]]]:
        """(tokens committed, sizes of the passes run) for each step."""
        b = self.block_size
        for tokens, _ in zip(cycle(self.accepted), range(n_steps)):
            if self.mode == "spec-linear":
                yield tokens, [b, b]  # draft, verify
            elif self.mode == "spec-quadratic":
                yield tokens, [b * b]
            elif self.mode == "diffusion":
                per_sub = math.ceil(self.sub_block_size / self.per_pass)
                yield b, [b] * (per_sub * (b // self.sub_block_size) + 1)  # denoising passes, then causal
            else:
                yield 1, [1]


def schedules(bench: dict) -> list[Schedule]:
    """The modes of `fast-dvlm bench` with the demo's measured acceptance (its `--json` output): the
    speculative modes replay their traces (spec-linear: the whole-block `-before` one, where the bench
    has it); diffusion unmasks its measured tokens per pass."""
    traces = bench["accepted_per_step"]
    out = [Schedule("ar", "ar")]
    for label in ("diffusion-t0.9", "diffusion-t0.7", "diffusion-t0.5"):
        per_pass = max(1, min(8, round(bench["modes"][label]["tokens_per_nfe"])))
        out.append(Schedule(label, "diffusion", 32, 8, per_pass=per_pass))
    # whole-block steps: the fixed policy's trace (the default policy's may hold 1-token AR steps)
    linear = traces.get("spec-linear-before", traces["spec-linear"])
    out.append(Schedule("spec-linear", "spec-linear", 32, 32, tuple(linear)))
    out.append(Schedule("spec-quadratic", "spec-quadratic", 8, 8, tuple(traces["spec-quadratic"])))
    return out


def expected_speedup(costs: dict[int, float], schedule: Schedule, n_steps: int = 1000) -> float:
    """AR's cost of the tokens over the schedule's cost of its passes, both from the curve."""
    tokens = passes = 0.0
    for committed, sizes in schedule.steps(n_steps):
        tokens += committed
        passes += sum(interpolate(costs, n) for n in sizes)
    return tokens * costs[1] / passes


def interpolate(costs: dict[int, float], n: int) -> float:
    """c(n) from the measured points, linear between neighbours (exact at measured sizes)."""
    if n in costs:
        return costs[n]
    below = max(k for k in costs if k < n)
    above = min(k for k in costs if k > n)
    return costs[below] + (costs[above] - costs[below]) * (n - below) / (above - below)


class ScheduledDiffusion(BlockDiffusionDecoder):
    """Block diffusion that unmasks `per_pass` positions per pass whatever the confidences say."""

    per_pass = 1

    def unmask(self, block, masked, logits, first_position) -> None:
        super().unmask(block, masked, logits, first_position)  # the real pass read-back and choice
        span = masked[first_position : first_position + logits.shape[0]]
        span[span.nonzero().flatten()[: self.per_pass - 1]] = False


@torch.inference_mode()
def timed_decode(
    model: PreTrainedModel, schedule: Schedule, context: int, new_tokens: int, device: str
) -> dict[str, float]:
    """Decode `new_tokens` after a random `context`-token prompt with the real decoder of the
    schedule's mode, its acceptance forced to the schedule. Seconds after the prefill."""
    vocab = model.config.vocab_size
    options = DecodeOptions(
        new_tokens, frozenset(), mask_id=vocab - 1, block_size=schedule.block_size,
        sub_block_size=schedule.sub_block_size, threshold=0.9,
        draft_policy="fixed",  # the schedule's whole-block passes, which the curve costs
    )  # fmt: skip
    if schedule.mode == "diffusion":
        decoder = type("Scheduled", (ScheduledDiffusion,), {"per_pass": schedule.per_pass})(options)
    else:
        decoder = make_decoder(schedule.mode, options)
    session = Session(model, TEXT)
    ids = torch.randint(0, vocab - 1, (1, context), device=device)
    prompt = LMInputs(model.get_input_embeddings()(ids), session.arange(0, context).view(1, 1, -1))
    first = session.prefill(prompt)
    accepted = cycle(schedule.accepted)

    def forced(draft: torch.Tensor, ar: torch.Tensor) -> int:
        return min(next(accepted) - 1, draft.shape[0] - 1)

    with ExitStack() as patches:
        for module in ("spec_linear", "spec_quadratic"):
            patches.enter_context(mock.patch(f"fast_dvlm.decoding.{module}.accepted_length", forced))
        sync(device)
        start = time.perf_counter()
        for _ in Answer(decoder, session, first).stream():
            pass
        sync(device)
        seconds = time.perf_counter() - start
    decode_passes = session.nfe - session.prefill_nfe
    return {"seconds": seconds, "tokens": len(session.tokens), "passes": decode_passes}
