"""Tasks that read text: fields of a rendered receipt, a word on a sign."""

from __future__ import annotations

import random

from .draw import COLOURS, canvas, text
from .task import QA, Example, NumberTask, VocabularyTask

NAMES = ("Ann", "Bob", "Eva", "Tom", "Max", "Zoe", "Sam", "Ivy")
WORDS = ("stop", "open", "exit", "shop", "park", "cafe", "bank", "taxi", "bus", "food", "hotel", "gate")


class Receipt(NumberTask):
    """DocVQA: read a field of a rendered receipt."""

    name, benchmark = "receipt", "DocVQA"

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        draw.rectangle([12, 12, 211, 211], outline=(60, 60, 60), width=2)
        fields = {"items": rng.randint(1, 9), "total": rng.randint(10, 99), "table": rng.randint(1, 20)}
        order = list(fields)
        rng.shuffle(order)
        name = rng.choice(NAMES)
        text(draw, (28, 22), f"Guest: {name}", 26)
        for k, field in enumerate(order):
            text(draw, (28, 70 + 46 * k), f"{field.capitalize()}: {fields[field]}", 28)
        qas = [
            QA(f"What is the {f} on the receipt?", f"The {f} on the receipt is {v}.", str(v))
            for f, v in fields.items()
        ]
        rng.shuffle(qas)
        return Example(self.name, image, qas)


class SignWord(VocabularyTask):
    """TextVQA: read the word written on a sign."""

    name, benchmark, vocabulary = "sign", "TextVQA", WORDS + tuple(COLOURS)

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        word = rng.choice(WORDS)
        colour = rng.choice(sorted(COLOURS))
        x, y = rng.randint(10, 40), rng.randint(30, 120)
        draw.rectangle([x, y, x + 170, y + 70], fill=COLOURS[colour])
        text(draw, (x + 18, y + 12), word.upper(), 40, colour=(255, 255, 255))
        qa = QA("What word is written on the sign?", f"The sign says {word}.", word)
        return Example(
            self.name, image, [qa, QA("What colour is the sign?", f"The sign is {colour}.", colour)]
        )
