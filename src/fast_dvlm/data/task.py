"""What a procedural task is: a seeded scene generator with questions about it, and a scorer."""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from PIL import Image

CANVAS = 224  # tasks draw at this size; images are resized to the model's resolution afterwards
DEMO_SIDE = 192  # the resolution the shipped demo models were trained at (3x3 FastViT tokens)


@dataclass
class QA:
    question: str
    answer: str  # the full reference answer the model is trained to give
    key: str  # what scoring compares: a word, a number, an option letter


@dataclass
class Example:
    task: str
    image: Image.Image
    qas: list[QA]  # several questions about the same image; tests use the first


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9.\- ]", " ", text.lower())).strip(" .")


def numbers_in(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]


class Task(ABC):
    """A skill mirroring one of the paper's benchmarks."""

    name: str
    benchmark: str  # the paper benchmark this task stands in for
    long_answer: bool = False

    @abstractmethod
    def make(self, rng: random.Random, split: str = "train") -> Example:
        """A new scene and questions about it, entirely determined by `rng` (and, for tasks drawing
        from a fixed pool of real images, by which split's share of the pool it may use)."""

    @abstractmethod
    def score(self, prediction: str, key: str) -> bool:
        """Whether `prediction` (the model's whole answer) gives the reference `key`."""


class VocabularyTask(Task):
    """Scored by a closed vocabulary: right iff the answer names the key and no other candidate."""

    vocabulary: tuple[str, ...]

    def score(self, prediction: str, key: str) -> bool:
        words = set(normalise(prediction).split())
        named = {w for w in self.vocabulary if w in words}
        return named == {key}


class NumberTask(Task):
    """Scored by the last number in the answer, within a relative tolerance."""

    tolerance: float = 0.0

    def score(self, prediction: str, key: str) -> bool:
        found = numbers_in(prediction.split("Final answer:")[-1])
        if not found:
            return False
        reference = float(key)
        return abs(found[-1] - reference) <= self.tolerance * max(abs(reference), 1e-9)


class ChoiceTask(Task):
    """Scored by the option letter the answer picks ("option B")."""

    def score(self, prediction: str, key: str) -> bool:
        letters = re.findall(r"\boption ([A-D])\b", prediction)
        return letters[-1:] == [key]
