"""Write the procedural tasks out as train/val/test splits in the LLaVA JSON format the trainer reads.

Every example is seeded by (split, task, index), so a split is the same on every machine. Test
images are made first, then validation, then training; a training or validation image identical
to one already in a later-evaluated split is replaced, so no image is shared between splits.
Some training records ask two or three questions about one image (multi-turn); every record also
lists all the questions its scene has, with their answer keys (vision pre-training reads them).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from . import TASKS
from .task import Example

SPLITS = ("test", "val", "train")  # the order of generation: held-out images claim their pixels first


def make_example(task: str, split: str, index: int, image_size: int, attempt: int = 0) -> Example:
    rng = random.Random(f"{split}/{task}/{index}/{attempt}")
    example = TASKS[task].make(rng, split)
    example.image = example.image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return example


def image_digest(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def record(example: Example, image: str, turns: int) -> dict:
    conversations = []
    for k, qa in enumerate(example.qas[:turns]):
        question = f"<image>\n{qa.question}" if k == 0 else qa.question
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": qa.answer}]
    first = example.qas[0]
    questions = [{"question": qa.question, "key": qa.key} for qa in example.qas]  # for vision pre-training
    return {
        "image": image,
        "task": example.task,
        "key": first.key,
        "questions": questions,
        "conversations": conversations,
    }


def build_splits(
    out: str | Path,
    per_task: dict[str, int],
    image_size: int,
    multi_turn: float = 0.3,
    progress: bool = True,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, Path]:
    """Write `out/{split}.json` and `out/images/{split}/*.png`; `per_task[split]` examples per task.

    Building only some `splits` gives the same images for them as a full build (a held-out split
    never depends on the training split)."""
    out = Path(out)
    seen: set[str] = set()
    paths = {}
    for split in [s for s in SPLITS if s in splits]:
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        jobs = [(t, i) for t in TASKS for i in range(per_task[split])]
        for task, index in tqdm(jobs, desc=f"{split} split", disable=not progress, leave=False):
            attempt = 0
            example = make_example(task, split, index, image_size)
            while image_digest(example.image) in seen:  # already used by a held-out split
                attempt += 1
                example = make_example(task, split, index, image_size, attempt)
            if split != "train":
                seen.add(image_digest(example.image))
            name = f"{task}_{index}.png"
            example.image.save(folder / name)
            rng = random.Random(f"turns/{split}/{task}/{index}")
            turns = rng.randint(2, 3) if split == "train" and rng.random() < multi_turn else 1
            records.append(record(example, f"images/{split}/{name}", turns))
        paths[split] = out / f"{split}.json"
        paths[split].write_text(json.dumps(records, indent=0))
    return paths
