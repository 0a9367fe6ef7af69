"""Measure what decoding costs on this machine: one pass of n tokens, and whole answers per mode."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..decoding import Session
from ..modes import HF_GENERATE
from ..prompt import ImageLike, encode_prompt
from ..vlm import DiffusionVLM
from .procedural import answer


@dataclass(frozen=True)
class ModeSpec:
    """One column of a speed table: a decoding mode with its settings."""

    label: str
    mode: str  # a decoding mode, or HF_GENERATE for transformers' own loop
    settings: dict = field(default_factory=dict)


DEFAULT_MODES = (
    ModeSpec(HF_GENERATE, HF_GENERATE),
    ModeSpec("ar", "ar"),
    ModeSpec("diffusion τ0.9", "diffusion", {"threshold": 0.9}),
    ModeSpec("diffusion τ0.7", "diffusion", {"threshold": 0.7}),
    ModeSpec("diffusion τ0.5", "diffusion", {"threshold": 0.5}),
    ModeSpec("spec-linear", "spec-linear"),
    ModeSpec("spec-quadratic B4", "spec-quadratic", {"block_size": 4}),
)


@torch.inference_mode()
def pass_cost_ms(
    vlm: DiffusionVLM, token_counts: Sequence[int], context: int = 200, repeats: int = 5
) -> dict[int, float]:
    """Median milliseconds of one language-model pass of n new tokens over a `context`-token cache."""
    session = Session(vlm.model, vlm.family)
    ids = torch.randint(0, len(vlm.tokenizer) - 1, (context,))
    session.forward(ids, torch.arange(context))
    costs = {}
    for n in token_counts:
        new = torch.randint(0, len(vlm.tokenizer) - 1, (n,))
        seq = torch.arange(context, context + n)
        times = []
        for _ in range(repeats + 1):  # the first run warms up and is discarded
            start = time.perf_counter()
            session.forward(new, seq)
            times.append(time.perf_counter() - start)
            session.rollback(context)
        costs[n] = 1000 * statistics.median(times[1:])
    return costs


def run_mode(
    vlm: DiffusionVLM, spec: ModeSpec, prompt: str, images: Sequence[ImageLike], max_new_tokens: int
):
    return answer(vlm, spec.mode, spec.settings, prompt, images, max_new_tokens)


def compare_modes(
    vlm: DiffusionVLM,
    prompts: Sequence[tuple[str, Sequence[ImageLike]]],
    modes: Sequence[ModeSpec] = DEFAULT_MODES,
    max_new_tokens: int = 64,
    repeats: int = 3,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Tokens/NFE and tokens/s of each mode over the same prompts, all in one run.

    Each (prompt, mode) is timed `repeats` times and its median taken; modes are interleaved per
    prompt so that machine noise hits them alike. Speed-up is relative to the first mode.
    """
    totals = {spec.label: {"tokens": 0, "nfe": 0, "seconds": 0.0} for spec in modes}
    jobs = [(p, spec) for p in prompts for spec in modes]
    for (prompt, images), spec in tqdm(jobs, desc="decoding", disable=not progress, leave=False):
        encode_prompt(vlm.processor, prompt, images)  # fail early on bad input, outside the timing
        runs = [run_mode(vlm, spec, prompt, images, max_new_tokens) for _ in range(repeats)]
        out = runs[0]
        totals[spec.label]["tokens"] += len(out.token_ids)
        totals[spec.label]["nfe"] += out.nfe
        totals[spec.label]["seconds"] += statistics.median(r.seconds for r in runs)
    base = totals[modes[0].label]
    base_rate = base["tokens"] / base["seconds"]
    return {
        label: {
            "tokens_per_nfe": t["tokens"] / t["nfe"],
            "tokens_per_s": t["tokens"] / t["seconds"],
            "speedup_vs_first": (t["tokens"] / t["seconds"]) / base_rate,
            "tokens": t["tokens"],
            "nfe": t["nfe"],
        }
        for label, t in totals.items()
    }
