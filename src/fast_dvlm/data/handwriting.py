"""Real handwriting: scikit-learn's digits (8x8 scans of handwritten digits), shipped with the package."""

from __future__ import annotations

import random
from functools import cache

import numpy as np
from PIL import Image

from .task import CANVAS, QA, Example, NumberTask


@cache
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


class Handwriting(NumberTask):
    """RealWorldQA: recognise a real handwritten digit. Scans are split 80/10/10 by index, so the
    train, validation and test splits never share a scan."""

    name, benchmark = "handwriting", "RealWorldQA"

    def make(self, rng: random.Random, split: str = "train") -> Example:
        images, labels = digit_images()
        n = len(labels)
        bounds = {"train": (0, int(0.8 * n)), "val": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
        index = rng.randrange(*bounds[split])
        pixels = (255 - images[index] * 255 / 16).astype(np.uint8)
        scan = Image.fromarray(pixels).resize((160, 160), Image.Resampling.BILINEAR).convert("RGB")
        image = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
        image.paste(scan, (rng.randint(0, 64), rng.randint(0, 64)))
        label = int(labels[index])
        return Example(
            self.name,
            image,
            [QA("Which digit is written here?", f"The handwritten digit is {label}.", str(label))],
        )
