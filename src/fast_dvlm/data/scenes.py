"""Tasks over coloured shapes: labelled diagrams, spatial relations, object presence, counting."""

from __future__ import annotations

import random

from .draw import COLOURS, SHAPES, canvas, free_boxes, shape, text
from .task import QA, ChoiceTask, Example, VocabularyTask

LETTERS = "ABCD"


class Diagram(VocabularyTask):
    """AI2D: a diagram whose parts carry letter labels; name the part a label points at."""

    name, benchmark, vocabulary = "diagram", "AI2D", SHAPES

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        kinds = rng.sample(SHAPES, 3)
        qas = []
        for letter, kind, box in zip(LETTERS, kinds, free_boxes(rng, 3, 56), strict=False):
            shape(draw, kind, box, rng.choice(sorted(COLOURS)))
            text(draw, (box[2] - 6, box[1] - 14), letter, 22)
            qas.append(
                QA(f"What shape is labelled {letter}?", f"The shape labelled {letter} is a {kind}.", kind)
            )
        rng.shuffle(qas)
        return Example(self.name, image, qas)


class Spatial(VocabularyTask):
    """GQA: where one shape is relative to another."""

    name, benchmark, vocabulary = "spatial", "GQA", ("left", "right", "above", "below")

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        first, second = rng.sample(sorted(COLOURS), 2)
        kind = rng.choice(SHAPES)
        horizontal = rng.random() < 0.5
        a, b = rng.randint(20, 60), rng.randint(130, 170)
        across = rng.randint(30, 150)
        boxes = [(a, across, a + 44, across + 44), (b, across, b + 44, across + 44)]
        if not horizontal:
            boxes = [(across, a, across + 44, a + 44), (across, b, across + 44, b + 44)]
        if rng.random() < 0.5:
            boxes.reverse()
        shape(draw, kind, boxes[0], first)
        shape(draw, kind, boxes[1], second)
        (ax, ay), (bx, by) = boxes[0][:2], boxes[1][:2]
        relation = ("left" if ax < bx else "right") if horizontal else ("above" if ay < by else "below")
        inverse = {"left": "right", "right": "left", "above": "below", "below": "above"}[relation]
        phrase = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
        return Example(
            self.name,
            image,
            [
                QA(
                    f"Where is the {first} {kind} relative to the {second} {kind}?",
                    f"The {first} {kind} is {phrase[relation]} the {second} {kind}.",
                    relation,
                ),  # fmt: skip
                QA(
                    f"Where is the {second} {kind} relative to the {first} {kind}?",
                    f"The {second} {kind} is {phrase[inverse]} the {first} {kind}.",
                    inverse,
                ),  # fmt: skip
            ],
        )


class Presence(VocabularyTask):
    """POPE: is an object present? Absent objects share a colour or a shape with present ones."""

    name, benchmark, vocabulary = "presence", "POPE", ("yes", "no")

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        objects = set()
        for box in free_boxes(rng, rng.randint(1, 3), 52):
            colour, kind = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
            shape(draw, kind, box, colour)
            objects.add((colour, kind))
        present = rng.choice(sorted(objects))
        while True:  # a hard negative: change the colour or the shape of a present object
            colour, kind = rng.choice(sorted(objects))
            absent = (
                (rng.choice(sorted(COLOURS)), kind) if rng.random() < 0.5 else (colour, rng.choice(SHAPES))
            )
            if absent not in objects:
                break
        qas = [
            QA(f"Is there a {c} {k} in the image?",
               f"Yes, there is a {c} {k}." if here else f"No, there is no {c} {k}.", "yes" if here else "no")
            for (c, k), here in ((present, True), (absent, False))
        ]  # fmt: skip
        rng.shuffle(qas)
        return Example(self.name, image, qas)


class Counting(ChoiceTask):
    """MMBench: a multiple-choice question (how many shapes of a kind)."""

    name, benchmark = "counting", "MMBench"

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        kind = rng.choice(SHAPES)
        count = rng.randint(1, 5)
        others = rng.randint(0, 2)
        boxes = free_boxes(rng, count + others, 40)
        colour = rng.choice(sorted(COLOURS))
        for box in boxes[:count]:
            shape(draw, kind, box, colour)
        for box in boxes[count:]:
            shape(draw, rng.choice([s for s in SHAPES if s != kind]), box, rng.choice(sorted(COLOURS)))
        first = rng.randint(max(1, count - 3), count)
        options = list(range(first, first + 4))
        letter = LETTERS[options.index(count)]
        listed = " ".join(f"{L}. {n}" for L, n in zip(LETTERS, options, strict=True))
        question = f"How many {kind}s are in the image? {listed}"
        return Example(
            self.name, image, [QA(question, f"There are {count}, so the answer is option {letter}.", letter)]
        )
