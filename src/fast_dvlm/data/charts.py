"""Tasks over charts and maps: read a bar's value, pick the labelled region."""

from __future__ import annotations

import random

from .draw import COLOURS, canvas, text
from .task import QA, ChoiceTask, Example, NumberTask

CITIES = ("Oslo", "Rome", "Lima", "Cairo", "Tokyo", "Paris", "Quito", "Delhi")


class BarChart(NumberTask):
    """ChartQA: the value of a named bar, on a chart with a labelled axis."""

    name, benchmark, tolerance = "chart", "ChartQA", 0.05

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        colours = rng.sample(sorted(COLOURS), 3)
        values = [rng.randint(1, 9) for _ in colours]
        base, unit = 200, 20  # y of the axis, pixels per unit
        draw.line([(30, base), (214, base)], fill=(0, 0, 0), width=2)
        draw.line([(30, base), (30, base - 9 * unit)], fill=(0, 0, 0), width=2)
        for v in (0, 3, 6, 9):
            text(draw, (8, base - v * unit - 8), str(v), 16)
            draw.line([(30, base - v * unit), (214, base - v * unit)], fill=(200, 200, 200), width=1)
        for k, (colour, value) in enumerate(zip(colours, values, strict=True)):
            x = 45 + k * 58
            draw.rectangle([x, base - value * unit, x + 40, base], fill=COLOURS[colour])
        qas = [
            QA(f"What is the value of the {c} bar?", f"The {c} bar has a value of {v}.", str(v))
            for c, v in zip(colours, values, strict=True)
        ]
        rng.shuffle(qas)
        return Example(self.name, image, qas)


class MapChoice(ChoiceTask):
    """SEED-Bench-2-Plus: a text-rich map; which city lies in the region of a given colour."""

    name, benchmark = "map", "SEED-Bench-2-Plus"

    def make(self, rng: random.Random, split: str = "train") -> Example:
        image, draw = canvas(rng)
        colours = rng.sample(sorted(COLOURS), 3)
        cities = rng.sample(CITIES, 3)
        tops = [0, 75, 150]
        rng.shuffle(tops)
        for colour, city, top in zip(colours, cities, tops, strict=True):
            draw.rectangle([0, top, 223, top + 73], fill=COLOURS[colour])
            text(draw, (rng.randint(10, 120), top + 24), city, 26, colour=(255, 255, 255))
        letters = "ABC"
        qas = []
        for colour, city in zip(colours, cities, strict=True):
            options = list(cities)
            rng.shuffle(options)
            listed = " ".join(f"{L}. {c}" for L, c in zip(letters, options, strict=True))
            letter = letters[options.index(city)]
            qas.append(QA(f"Which city is in the {colour} region? {listed}",
                          f"The {colour} region is {city}, option {letter}.", letter))  # fmt: skip
        rng.shuffle(qas)
        return Example(self.name, image, qas)
