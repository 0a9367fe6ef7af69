"""Answer a split's questions with one decoding mode and score them with each task's own scorer."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..data import get_task
from ..vlm import GenerationOutput


@dataclass
class Item:
    task: str
    question: str
    key: str
    image: Path


@dataclass
class TaskScore:
    correct: int = 0
    total: int = 0
    tokens: int = 0
    nfe: int = 0
    seconds: float = 0.0
    accepted: list[int] = field(default_factory=list)  # tokens committed per decoding step

    def add(self, out: GenerationOutput, right: bool) -> None:
        self.correct += int(right)
        self.total += 1
        self.tokens += len(out.token_ids)
        self.nfe += out.nfe
        self.seconds += out.seconds
        self.accepted += [step.tokens for step in out.trace]

    def merge(self, other: TaskScore) -> None:
        self.correct += other.correct
        self.total += other.total
        self.tokens += other.tokens
        self.nfe += other.nfe
        self.seconds += other.seconds
        self.accepted += other.accepted

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": 100.0 * self.correct / max(self.total, 1),
            "tokens_per_nfe": self.tokens / max(self.nfe, 1),
            "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
            "items": self.total,
        }


def read_items(split_file: str | Path, per_task: int | None = None) -> list[Item]:
    """The first question of each record of a split written by `fast_dvlm.data.build`."""
    split_file = Path(split_file)
    items, counts = [], defaultdict(int)
    for record in json.loads(split_file.read_text()):
        task = record["task"]
        if per_task is not None and counts[task] >= per_task:
            continue
        counts[task] += 1
        items.append(Item(task, first_question(record), record["key"], split_file.parent / record["image"]))
    return items


def first_question(record: dict) -> str:
    """The question a split record asks about its image, without the image placeholder."""
    return record["conversations"][0]["value"].replace("<image>\n", "")


def score_answers(
    items: list[Item],
    answer: Callable[[Item], GenerationOutput],
    desc: str = "scoring",
    progress: bool = True,
) -> dict[str, TaskScore]:
    """Run `answer` on every item; per-task scores and costs."""
    scores: dict[str, TaskScore] = defaultdict(TaskScore)
    for item in tqdm(items, desc=desc, disable=not progress, leave=False):
        out = answer(item)
        scores[item.task].add(out, get_task(item.task).score(out.text, item.key))
    return dict(scores)


def mean_accuracy(scores: dict[str, TaskScore]) -> float:
    """Accuracy averaged over tasks (each task counts once, whatever its number of items)."""
    return sum(s.summary()["accuracy"] for s in scores.values()) / max(len(scores), 1)


def answer_groups(tasks: list[str]) -> dict[str, list[str]]:
    """`tasks` split into the short-answer ones (the paper's 10-benchmark average) and the long one."""
    return {
        "short": [t for t in tasks if not get_task(t).long_answer],
        "long": [t for t in tasks if get_task(t).long_answer],
    }
