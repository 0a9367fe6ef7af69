"""The README's main job: the demo model answers questions about freshly drawn images, every mode
side by side with its AR base."""

from __future__ import annotations

import random

from PIL import Image
from rich.console import Console
from rich.table import Table

from .data import get_task
from .data.task import DEMO_SIDE
from .vlm import GenerationOutput, load

SCENES = ("steps", "chart", "receipt", "map")  # one long answer, three short ones
MODES = (("spec-linear", {}), ("spec-quadratic", {"block_size": 8}), ("diffusion", {"threshold": 0.9}))


def run_demo(
    model: str = "demo", base: str = "demo-ar", scenes: int = len(SCENES), seed: int | None = None
) -> None:
    """Decode fresh scenes with the AR base (transformers generate, our ar) and the converted model."""
    console = Console()
    converted, ar_base = load(model), load(base)
    rng = random.Random(seed)
    console.print(f"[bold]fast-dvlm demo[/bold]: {model} (converted) vs {base} (its AR base), fresh images")
    for task_name in SCENES[:scenes]:
        task = get_task(task_name)
        example = task.make(random.Random(rng.random()), "test")
        example.image = example.image.resize((DEMO_SIDE, DEMO_SIDE), Image.Resampling.LANCZOS)  # as trained
        qa = example.qas[0]
        reference = ar_base.hf_generate(qa.question, [example.image], 128)
        runs: list[tuple[str, GenerationOutput]] = [
            ("AR base, transformers generate", reference),
            ("AR base, fast-dvlm ar", ar_base.generate(qa.question, [example.image], "ar", 128)),
        ]
        for mode, settings in MODES:
            runs.append(
                (f"Fast-dVLM {mode}", converted.generate(qa.question, [example.image], mode, 128, **settings))
            )
        table = Table(title=f"{task.benchmark}-like: {qa.question}", title_justify="left", show_lines=False)
        for column in ("decoder", "answer", "right", "tokens/NFE", "tokens/s", "speed-up"):
            table.add_column(column, overflow="fold")
        for label, out in runs:
            table.add_row(
                label,
                out.text if len(out.text) <= 160 else out.text[:160] + "...",
                "yes" if task.score(out.text, qa.key) else "no",
                f"{out.tokens_per_nfe:.2f}",
                f"{out.tokens_per_second:.0f}",
                f"{out.tokens_per_second / reference.tokens_per_second:.1f}x",
            )
        console.print(table)
