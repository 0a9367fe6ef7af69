"""Score a model on the test split with `run_bench`, summarised the way the paper reports it."""

from __future__ import annotations

from pathlib import Path

from ..data import TASKS
from ..eval.accuracy import TaskScore, answer_groups, mean_accuracy
from ..eval.bench import BenchMode, combine, run_bench
from ..settings import THRESHOLD
from ..vlm import DiffusionVLM

HEADLINE = "diffusion-t0.9"  # the paper's masked diffusion at tau 0.9: the mode of every ablation
VARIANT_MODES = (
    BenchMode("ar", "converted", "ar"),
    BenchMode(HEADLINE, "converted", "diffusion", {"threshold": THRESHOLD}),
    BenchMode("spec-linear", "converted", "spec-linear"),
)
BASE_MODES = (BenchMode("ar", "base", "ar"),)


def summarise(per_task: dict[str, TaskScore]) -> dict:
    """Accuracy averaged over tasks (each counts once), as the paper averages benchmarks, for all
    tasks, the short-answer ones (the paper's 10-benchmark average) and the long-answer one; tokens
    per NFE and per second pooled; and each task's counts (for the sampling error)."""
    tasks = [t for t in TASKS if t in per_task]
    groups = {"all": tasks} | answer_groups(tasks)
    out: dict = {"tasks": {t: {"correct": per_task[t].correct, "total": per_task[t].total} for t in tasks}}
    for name, group in groups.items():
        if group:
            pooled = combine(per_task, group).summary()
            out[name] = {
                "accuracy": mean_accuracy({t: per_task[t] for t in group}),
                "tokens_per_nfe": pooled["tokens_per_nfe"],
                "tokens_per_s": pooled["tokens_per_s"],
            }
    return out


def evaluate(
    model: DiffusionVLM,
    split: Path,
    modes: tuple[BenchMode, ...],
    per_task: int | None,
    max_new_tokens: int,
    progress: bool = True,
) -> dict:
    """`{mode label: summary}` of `model` (standing in as both "base" and "converted") on `split`."""
    scores = run_bench({"base": model, "converted": model}, split, per_task, modes, max_new_tokens, progress)
    return {label: summarise(per_task_scores) for label, per_task_scores in scores.items()}
