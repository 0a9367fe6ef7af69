"""Drawing helpers shared by the tasks: colours, shapes, text, all on a 224x224 canvas."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageFont

from .task import CANVAS

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 170),
    "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "star")


def canvas(rng: random.Random) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    shade = rng.randint(235, 255)
    image = Image.new("RGB", (CANVAS, CANVAS), (shade, shade, shade))
    return image, ImageDraw.Draw(image)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: str) -> None:
    x0, y0, x1, y1 = box
    fill = COLOURS[colour]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "star":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -1.5708 + k * 0.6283
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(kind)


def text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    value: str,
    size: int,
    colour: tuple[int, int, int] = (20, 20, 20),
) -> None:
    draw.text(xy, value, font=font(size), fill=colour)


def disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def free_boxes(rng: random.Random, count: int, size: int, margin: int = 8) -> list[tuple[int, int, int, int]]:
    """`count` non-overlapping square boxes of side `size` inside the canvas."""
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:
        x, y = rng.randint(margin, CANVAS - size - margin), rng.randint(margin, CANVAS - size - margin)
        box = (x, y, x + size, y + size)
        if all(disjoint(box, other, margin) for other in boxes):
            boxes.append(box)
    return boxes
