"""Procedural visual tasks: eleven skills mirroring the paper's eleven benchmarks, fully offline."""

from __future__ import annotations

from ..errors import FastDVLMError
from .charts import BarChart, MapChoice
from .handwriting import Handwriting
from .numbers import Arithmetic, StepByStep
from .scenes import Counting, Diagram, Presence, Spatial
from .task import QA, Example, Task
from .text import Receipt, SignWord

# in the order of the paper's table: AI2D, ChartQA, DocVQA, GQA, MMBench, MMMU, POPE, RWQA, SEED2+, TextVQA,
# then the long-answer MMMU-Pro-V stand-in
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Diagram(),
        BarChart(),
        Receipt(),
        Spatial(),
        Counting(),
        Arithmetic(),
        Presence(),
        Handwriting(),
        MapChoice(),
        SignWord(),
        StepByStep(),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise FastDVLMError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["QA", "TASKS", "Example", "Task", "get_task"]
