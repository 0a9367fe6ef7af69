"""The inference sweep: masked diffusion over thresholds tau and block sizes, accuracy against speed.

Every setting answers the same items, interleaved (`run_bench`), so machine noise hits all alike.
A setting is on the frontier when no other is at least as accurate and as fast, and better in one.
"""

from __future__ import annotations

from pathlib import Path

from ..eval.bench import BenchMode, run_bench
from ..settings import BLOCK_SIZE, SUB_BLOCK_SIZE, THRESHOLD
from ..vlm import DiffusionVLM
from .evaluate import summarise

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
BLOCK_SIZES = (4, 8, 16, 32, 64)
DEFAULT = {"threshold": THRESHOLD, "block_size": BLOCK_SIZE}


def sweep_modes(thresholds: tuple[float, ...], block_sizes: tuple[int, ...]) -> tuple[BenchMode, ...]:
    """One diffusion mode per (tau, B); sub-blocks of 8 (the default) or the whole block if smaller."""
    return tuple(
        BenchMode(f"tau{t}-B{b}", "converted", "diffusion",
                  {"threshold": t, "block_size": b, "sub_block_size": min(SUB_BLOCK_SIZE, b)})
        for b in block_sizes
        for t in thresholds
    )  # fmt: skip


def run_sweep(
    model: DiffusionVLM,
    split: Path,
    per_task: int | None,
    thresholds: tuple[float, ...],
    block_sizes: tuple[int, ...],
    max_new_tokens: int,
    progress: bool = True,
) -> list[dict]:
    """One point per setting: tau, B, accuracy (mean over tasks), tokens/NFE, tokens/s, frontier,
    and each task's counts."""
    modes = sweep_modes(thresholds, block_sizes)
    scores = run_bench({"converted": model}, split, per_task, modes, max_new_tokens, progress)
    points = []
    for m in modes:
        summary = summarise(scores[m.label])
        setting = {"threshold": m.settings["threshold"], "block_size": m.settings["block_size"]}
        points.append(setting | summary["all"] | {"tasks": summary["tasks"]})  # counts: the noise
    for point in points:
        point["frontier"] = not any(dominates(other, point) for other in points)
    return points


def default_point(points: list[dict], default: dict = DEFAULT) -> dict | None:
    """The sweep's point at the `default` settings (tau and B), or None if they were not swept."""
    return next((p for p in points if all(p[k] == v for k, v in default.items())), None)


def dominates(a: dict, b: dict) -> bool:
    """`a` is at least as accurate and as fast as `b`, and better in one of the two."""
    at_least = a["accuracy"] >= b["accuracy"] and a["tokens_per_s"] >= b["tokens_per_s"]
    return at_least and (a["accuracy"] > b["accuracy"] or a["tokens_per_s"] > b["tokens_per_s"])
