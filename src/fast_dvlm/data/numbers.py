"""Reasoning over numbers shown in the image: a two-step sum, and a long step-by-step answer."""

from __future__ import annotations

import random
import re

from .draw import canvas, free_boxes, text
from .task import QA, Example, NumberTask

SUM_QUESTION = "What is the sum of the two numbers?"
LARGER_QUESTION = "What is the larger number?"
# how a `steps` answer lists the boxes' numbers (readouts and failure analysis read them back)
STEP_NUMBERS = re.compile(r"from left to right, are (\d+), (\d+) and (\d+)\.")


def numbers_scene(rng: random.Random, count: int) -> tuple:
    image, draw = canvas(rng)
    values = [rng.randint(1, 9) for _ in range(count)]
    for value, box in zip(values, sorted(free_boxes(rng, count, 60)), strict=True):
        draw.rectangle(box, outline=(40, 40, 40), width=3)
        text(draw, (box[0] + 18, box[1] + 8), str(value), 40)
    return image, values


class Arithmetic(NumberTask):
    """MMMU: multi-step reasoning over what is shown (combine two numbers)."""

    name, benchmark = "arithmetic", "MMMU"

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, (a, b) = numbers_scene(rng, 2)
        qas = [
            QA(SUM_QUESTION, f"The sum of the two numbers is {a + b}.", str(a + b)),
            QA(LARGER_QUESTION, f"The larger number is {max(a, b)}.", str(max(a, b))),
        ]
        return Example(self.name, image, qas)


class StepByStep(NumberTask):
    """MMMU-Pro-V: a long, step-by-step answer ending in a final answer."""

    name, benchmark, long_answer = "steps", "MMMU-Pro-V", True

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, values = numbers_scene(rng, 3)
        a, b, c = values
        steps = (
            f"Step 1: the numbers in the boxes, from left to right, are {a}, {b} and {c}. "
            f"Step 2: add the first two numbers, {a} + {b} = {a + b}. "
            f"Step 3: add the third number, {a + b} + {c} = {a + b + c}. "
            f"Final answer: {a + b + c}."
        )
        return Example(self.name, image, [QA("Add up all the numbers step by step.", steps, str(a + b + c))])
