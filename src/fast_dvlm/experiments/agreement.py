"""Where our numbers agree with the paper's: each effect against the run-to-run noise.

The noise of an accuracy difference is the larger of two yardsticks: how far the repeat of `direct`
(same recipe, another seed) landed from `direct`, and twice the sampling standard error of a
difference of two task-averaged accuracies on this many test items. An effect counts only beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..data import get_task

AGREES, NOISE, DISAGREES = "agrees", "within noise", "disagrees"


@dataclass
class Noise:
    seed_difference: float  # |direct - repeat|
    sampling: float  # 2 standard errors of a difference
    unit: str = "points"

    @property
    def size(self) -> float:
        return max(self.seed_difference, self.sampling)


def accuracy(summary: dict, group: str = "short") -> float:
    return summary[group]["accuracy"]


def group_tasks(summary: dict, group: str) -> list[str]:
    """The tasks of a bench summary in one group: short answers, the long answer, or all."""
    return [t for t in summary["tasks"] if group == "all" or get_task(t).long_answer == (group == "long")]


def sampling_error(counts: list[dict[str, dict]], tasks: list[str]) -> float:
    """Two standard errors (points) of a difference of two accuracies averaged over `tasks`, from
    the pooled success rate of each task over `counts` (`{task: {"correct", "total"}}` per run)."""
    variance = 0.0  # of one task-averaged accuracy, times len(tasks) ** 2
    for task in tasks:
        correct = sum(c[task]["correct"] for c in counts)
        total = sum(c[task]["total"] for c in counts)
        p = correct / max(total, 1)
        variance += p * (1 - p) / max(total / len(counts), 1)
    return 2 * 100 * math.sqrt(2 * variance) / max(len(tasks), 1)


def accuracy_noise(direct: dict, repeat: dict, group: str = "short") -> Noise:
    """Noise of an accuracy difference in `group`, from two bench summaries of one recipe."""
    seed = abs(accuracy(direct, group) - accuracy(repeat, group))
    return Noise(seed, sampling_error([direct["tasks"], repeat["tasks"]], group_tasks(direct, group)))


def verdict(effect: float, expected_sign: int, noise: Noise) -> str:
    """`agrees` when the effect has the paper's sign and exceeds the noise, `disagrees` when it has
    the other sign beyond the noise, otherwise `within noise`."""
    if abs(effect) <= noise.size:
        return NOISE
    return AGREES if effect * expected_sign > 0 else DISAGREES


def saving(cheap: float, costly: float) -> float:
    """How much smaller `cheap` is than `costly`, in % of `costly`."""
    return 100 * (1 - cheap / costly)
