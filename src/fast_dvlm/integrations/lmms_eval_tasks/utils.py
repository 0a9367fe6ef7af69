"""How the `fast_dvlm_procedural` lmms-eval task reads a split record and scores an answer: with the same
question text and the same per-task scorers as `fast-dvlm bench`, so the two report the same accuracy."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from PIL import Image

from fast_dvlm.data import get_task
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.eval.accuracy import first_question
from fast_dvlm.prompt import load_image


def doc_to_visual(doc: dict) -> list[Image.Image]:
    path = Path(doc["image"])  # relative to the split's folder, which lmms-eval must run in
    if not path.is_file():
        raise FastDVLMError(f"{path} not found: run lmms-eval in the folder that holds the split's test.json")
    return [load_image(path)]


def doc_to_text(doc: dict) -> str:
    return first_question(doc)


def process_results(doc: dict, results: list[str]) -> dict[str, tuple[str, bool]]:
    """The answer's task and whether it is right; `mean_over_tasks` turns these into the accuracy."""
    return {"accuracy": (doc["task"], get_task(doc["task"]).score(results[0], doc["key"]))}


def mean_over_tasks(scored: list[tuple[str, bool]]) -> float:
    """Accuracy in %, averaged over tasks so each task counts once (`fast-dvlm bench`'s definition)."""
    per_task = defaultdict(list)
    for task, right in scored:
        per_task[task].append(right)
    return sum(100.0 * sum(r) / len(r) for r in per_task.values()) / len(per_task)
