"""A small procedural data set for training tests: coloured shapes and questions about them."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square")


def write_shapes_dataset(folder: Path, count: int, seed: int = 0, size: int = 56) -> Path:
    """`count` one- or two-turn conversations about one picture each, as LLaVA JSON."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size, size), (250, 250, 250))
        box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
        (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(
            box, fill=COLOURS[colour]
        )
        name = f"img{i}.png"
        image.save(folder / name)
        turns = [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": f"The shape is {colour}."},
        ]
        if i % 2:
            turns += [
                {"from": "human", "value": "Which shape is it?"},
                {"from": "gpt", "value": f"A {shape}."},
            ]
        records.append({"image": name, "conversations": turns})
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path
