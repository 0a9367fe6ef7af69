"""Multi-turn test conversations: 2-3 questions about one image, asked in one conversation.

They come from the same procedural tasks as the training data, drawn from seeds no split uses (the
test split's share of any real-image pool, indices from `FIRST_INDEX`), and an image identical to a
training image is drawn again. Only tasks whose scenes have two or more questions take part. Each
answer is decoded after the model's own earlier answers (as in `fast-dvlm chat`) and scored.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..chat import Conversation
from ..data import TASKS, get_task
from ..data.build import image_digest, make_example, record
from ..vlm import DiffusionVLM

FIRST_INDEX = 1_000_000  # the splits use indices from 0: far above any split's size
TRIES = 20  # scenes drawn per wanted conversation before a task is taken to have one question only


def build_multi_turn(data: Path, per_task: int, progress: bool = True) -> Path:
    """Write `data/multiturn-{per_task}.json` (and its images) beside the splits, unless it is there."""
    out = data / f"multiturn-{per_task}.json"
    if out.exists():
        return out
    test = json.loads((data / "test.json").read_text())
    with Image.open(data / test[0]["image"]) as first:
        side = first.size[0]  # the splits' own image size
    trained = training_digests(data, progress)
    folder = data / "images" / "multiturn"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for task in tqdm(TASKS, desc="multi-turn test set", disable=not progress, leave=False):
        found = 0
        for index in range(FIRST_INDEX, FIRST_INDEX + TRIES * per_task):
            if found == per_task:
                break
            attempt = 0
            example = make_example(task, "test", index, side)
            while image_digest(example.image) in trained:
                attempt += 1
                example = make_example(task, "test", index, side, attempt)
            if len(example.qas) < 2:
                continue
            name = f"{task}_{index}.png"
            example.image.save(folder / name)
            turns = random.Random(f"turns/multiturn/{task}/{index}").randint(2, min(3, len(example.qas)))
            records.append(record(example, f"images/multiturn/{name}", turns))
            found += 1
    out.write_text(json.dumps(records, indent=0))
    return out


def training_digests(data: Path, progress: bool) -> set[str]:
    """Digests of the training split's images, as stored (PNG keeps the pixels `make_example` drew)."""
    digests = set()
    for rec in tqdm(json.loads((data / "train.json").read_text()), desc="reading training images",
                    disable=not progress, leave=False):  # fmt: skip
        with Image.open(data / rec["image"]) as image:
            digests.add(image_digest(image))
    return digests


def score_multi_turn(
    model: DiffusionVLM,
    conversations: Path,
    mode: str,
    settings: dict,
    max_new_tokens: int,
    progress: bool = True,
) -> dict:
    """Accuracy averaged over tasks (with each task's counts), of every answer, of the first answers
    and of the follow-ups (turns 2 and 3, which a block crossing turns in training could have taught
    to read the wrong context)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"first": [0, 0], "follow-up": [0, 0]})
    records = json.loads(conversations.read_text())
    for rec in tqdm(records, desc="multi-turn", disable=not progress, leave=False):
        chat = Conversation(str(conversations.parent / rec["image"]))
        questions = [turn["value"].replace("<image>\n", "") for turn in rec["conversations"][::2]]
        for k, question in enumerate(questions):
            out = chat.ask(model, question, mode, max_new_tokens=max_new_tokens, **settings)
            right = get_task(rec["task"]).score(out.text, rec["questions"][k]["key"])
            tally = counts[rec["task"]]["first" if k == 0 else "follow-up"]
            tally[0] += int(right)
            tally[1] += 1

    def part(which: tuple[str, ...]) -> dict:
        tasks = {t: {"correct": sum(c[w][0] for w in which), "total": sum(c[w][1] for w in which)}
                 for t, c in counts.items()}  # fmt: skip
        rates = [100 * n["correct"] / n["total"] for n in tasks.values()]
        return {"accuracy": sum(rates) / max(len(rates), 1), "tasks": tasks}

    return {
        "all": part(("first", "follow-up")),
        "first": part(("first",)),
        "follow_up": part(("follow-up",)),
        "conversations": len(records),
    }
