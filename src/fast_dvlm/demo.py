"""The README's main job: a model answers questions about freshly drawn images, every mode side by side."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from .decoding import DECODERS
from .vlm import load

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}


def draw_scene(seed: int) -> tuple[Image.Image, str]:
    """A picture of a few coloured shapes and a question about it."""
    rng = random.Random(seed)
    image = Image.new("RGB", (224, 224), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    names = rng.sample(sorted(COLOURS), 3)
    for k, name in enumerate(names):
        x, y = 20 + 65 * k, rng.randint(20, 150)
        shape = draw.ellipse if k % 2 else draw.rectangle
        shape([x, y, x + 50, y + 50], fill=COLOURS[name])
    return image, f"What colour is the shape on the {rng.choice(['left', 'right'])}?"


def run_demo(model: str, max_new_tokens: int = 32, scenes: int = 3) -> None:
    console = Console()
    vlm = load(model)
    console.print(f"[bold]fast-dvlm demo[/bold] on {model}: transformers generate vs our decoding modes")
    for seed in range(scenes):
        image, question = draw_scene(seed)
        reference = vlm.hf_generate(question, [image], max_new_tokens)
        table = Table(title=f"scene {seed}: {question}", title_justify="left")
        for column in ("mode", "answer", "tokens", "NFE", "tok/NFE", "tok/s", "= generate"):
            table.add_column(column, overflow="fold")
        for out in [reference] + [vlm.generate(question, [image], mode, max_new_tokens) for mode in DECODERS]:
            table.add_row(
                out.mode,
                repr(out.text[:48]),
                str(len(out.token_ids)),
                str(out.nfe),
                f"{out.tokens_per_nfe:.2f}",
                f"{out.tokens_per_second:.0f}",
                "yes" if out.token_ids == reference.token_ids else "NO",
            )
        console.print(table)
