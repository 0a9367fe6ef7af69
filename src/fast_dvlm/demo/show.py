"""The README's main job: the demo model answers questions about freshly drawn images, every mode
side by side with its AR base."""

from __future__ import annotations

import random
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from ..data import get_task
from ..data.task import DEMO_SIDE, QA, Task
from ..errors import FastDVLMError
from ..vlm import GenerationOutput, load

SCENES = ("steps", "chart", "receipt", "map")  # one long answer, three short ones
MODES = (("spec-linear", {}), ("spec-quadratic", {"block_size": 8}), ("diffusion", {"threshold": 0.9}))
MAX_NEW_TOKENS = 128


@dataclass
class Scene:
    """One drawn image, its question, and every decoder's answer to it."""

    image: Path
    qa: QA
    runs: dict[str, GenerationOutput]  # decoder label -> answer, with the median time of its runs


def median_run(run: Callable[[], GenerationOutput], repeats: int) -> GenerationOutput:
    """The answer of `run` timed as the median of `repeats` runs after a warm-up run. Decoding is
    greedy, so every run gives the same answer; a single run's speed is noise (first-call costs,
    other processes) that swamps the differences between modes."""
    run()
    outs = [run() for _ in range(repeats)]
    return replace(outs[0], seconds=statistics.median(out.seconds for out in outs))


def run_demo(
    model: str = "demo",
    base: str = "demo-ar",
    scenes: int = len(SCENES),
    seed: int | None = None,
    repeats: int = 3,
    out_dir: str | Path | None = None,
) -> list[Scene]:
    """Decode fresh scenes with the AR base (transformers generate, our ar) and the converted model;
    print each scene's image path, question, reference answer, speeds and whole answers."""
    if repeats < 1:
        raise FastDVLMError(f"repeats must be at least 1, got {repeats}")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="fast-dvlm-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    console = Console()
    converted, ar_base = load(model), load(base)
    rng = random.Random(seed)
    console.print(
        f"[bold]fast-dvlm demo[/bold]: {model} (converted) vs {base} (its AR base), fresh images; "
        f"times are medians of {repeats} runs after a warm-up"
    )
    done = []
    for number, task_name in enumerate(SCENES[:scenes], 1):
        task = get_task(task_name)
        example = task.make(random.Random(rng.random()), "test")
        image = example.image.resize((DEMO_SIDE, DEMO_SIDE), Image.Resampling.LANCZOS)  # as trained
        path = folder / f"{number}-{task_name}.png"
        image.save(path)
        qa = example.qas[0]
        ask = (qa.question, [image])
        runs = {
            "AR base, transformers generate": partial(ar_base.hf_generate, *ask, MAX_NEW_TOKENS),
            "AR base, fast-dvlm ar": partial(ar_base.generate, *ask, "ar", MAX_NEW_TOKENS),
        }
        for mode, settings in MODES:
            runs[f"Fast-dVLM {mode}"] = partial(converted.generate, *ask, mode, MAX_NEW_TOKENS, **settings)
        scene = Scene(path, qa, {label: median_run(run, repeats) for label, run in runs.items()})
        show(console, number, task, scene)
        done.append(scene)
    return done


def show(console: Console, number: int, task: Task, scene: Scene) -> None:
    """The scene's header, a table of correctness and speed, then each distinct answer in full."""
    plain = partial(console.print, markup=False, highlight=False, soft_wrap=True)  # answers verbatim
    console.print(f"\n[bold]{number}. {task.benchmark}-like[/bold] ({task.name})")
    plain(f"image: {scene.image}")
    plain(f"question: {scene.qa.question}")
    plain(f"reference: {scene.qa.answer}  (scored on: {scene.qa.key})")
    reference = next(iter(scene.runs.values()))
    table = Table(show_lines=False)
    for column in ("decoder", "right", "tokens", "tokens/NFE", "tokens/s", "speed-up"):
        table.add_column(column, overflow="fold")
    answers: dict[str, list[str]] = {}
    for label, out in scene.runs.items():
        table.add_row(
            label,
            "yes" if task.score(out.text, scene.qa.key) else "no",
            str(len(out.token_ids)),
            f"{out.tokens_per_nfe:.2f}",
            f"{out.tokens_per_second:.0f}",
            f"{out.tokens_per_second / reference.tokens_per_second:.1f}x",
        )
        answers.setdefault(out.text, []).append(label)
    console.print(table)
    for text, labels in answers.items():
        plain(f"answer of {'; '.join(labels)}: {text}")
