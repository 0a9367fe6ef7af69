"""Where the demo loses `spatial`: in its vision tower or in its language model (issue 17).

    OMP_NUM_THREADS=2 python -m benchmarks.binding_study --out benchmarks/results/binding_study

`spatial` asks "Where is the red circle relative to the orange circle?" (above, below, left or
right). The shipped AR base gets the axis right and guesses the side: about 50%. Each arm below
fine-tunes a fresh copy of the shipped AR base (`demo-ar`) on the training split's spatial records,
single-turn (each record's first question: in a two-question record the second answer is the first
one inverted, so it can be copied from the context rather than read from the image), and scores every
question of the validation split's spatial records with `ar` decoding, before and after:

- `lm`: AR training as the recipe trains (tower, projector and language model under one loss);
- `tower-first`: first the tower and projector alone, under a small attention head (each of the two
  colours the question names attends over the visual tokens by content, as a language model's
  attention would; a small MLP reads the two results), whose validation accuracy says whether the
  visual tokens can hold the answer; then the same AR training as `lm`, from that tower: can the
  language model learn to read what they hold?
- `lm-all-tasks`, `tower-first-all-tasks`: the same two starts, AR-trained on the whole training
  split instead (every task, multi-turn records, as the recipe trains), scored on spatial and on
  the 10 other tasks (each validation record's first question): does it survive mixed training?
- `question-first` (not a default): `lm` with the question before the image, so that the image's
  positions in the language model can attend to the question.

About an hour on 2 cores for the default arms (each AR training about 10 minutes, scoring all tasks
about 2).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from fast_dvlm.data import get_task
from fast_dvlm.data.draw import COLOURS
from fast_dvlm.demo.recipe import DemoRecipe, ar_config
from fast_dvlm.demo.vision_pretrain import visual_tokens
from fast_dvlm.eval.accuracy import Item, mean_accuracy, read_items, score_answers
from fast_dvlm.prompt import Messages
from fast_dvlm.train.trainer import convert
from fast_dvlm.vlm import DiffusionVLM, load

TASK = "spatial"
ANSWERS = get_task(TASK).vocabulary
QUESTION = re.compile(r"Where is the (\w+) \w+ relative to the (\w+) \w+\?")
COLOUR_NAMES = sorted(COLOURS)
ARMS = ("lm", "tower-first", "lm-all-tasks", "tower-first-all-tasks", "question-first")
DEFAULT_ARMS = ARMS[:4]


def colours(question: str) -> tuple[int, int]:
    """The indices of the two colours a spatial question names (subject, reference)."""
    match = QUESTION.fullmatch(question)
    if match is None:
        raise ValueError(f"not a spatial question: {question!r}")
    return COLOUR_NAMES.index(match[1]), COLOUR_NAMES.index(match[2])


def questions(split_file: Path, first_only: bool = False) -> list[Item]:
    """The split's spatial questions (every question of each record, or each record's first), as
    `read_items` gives first questions."""
    out = []
    for record in json.loads(split_file.read_text()):
        if record["task"] == TASK:
            asked = record["questions"][:1] if first_only else record["questions"]
            out += [Item(TASK, q["question"], q["key"], split_file.parent / record["image"]) for q in asked]
    return out


def training_file(split_file: Path, question_first: bool) -> Path:
    """The split's spatial records as single-turn conversations, the image before the question (or after)."""
    records = []
    for record in json.loads(split_file.read_text()):
        if record["task"] == TASK:
            question, answer = record["questions"][0]["question"], record["conversations"][1]
            user = f"{question}\n<image>" if question_first else f"<image>\n{question}"
            records.append(record | {"conversations": [{"from": "human", "value": user}, answer]})
    path = split_file.with_name(f"{TASK}_single_turn{'_question_first' if question_first else ''}.json")
    path.write_text(json.dumps(records))
    return path


def prompt(item: Item, question_first: bool) -> Messages:
    parts = [{"type": "image"}, {"type": "text", "text": item.question}]
    return [{"role": "user", "content": parts[::-1] if question_first else parts}]


def accuracy(vlm: DiffusionVLM, held_out: list[Item], question_first: bool = False) -> float:
    """Percent of `held_out` answered right, greedy `ar` decoding."""
    scores = score_answers(held_out, lambda i: vlm.generate(prompt(i, question_first), [i.image], "ar", 32))
    return mean_accuracy(scores)


class ColourReadout(nn.Module):
    """Each named colour attends over the visual tokens by content; an MLP reads both results."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.colour = nn.Embedding(len(COLOUR_NAMES), dim)
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.read = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, len(ANSWERS)))

    def forward(self, tokens: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """`tokens` `[B, N, D]`, `colours` `[B, 2]` -> answer logits `[B, 4]`."""
        keys, values = self.key(tokens), self.value(tokens)
        queries = self.colour(colours)  # [B, 2, D]
        weights = torch.softmax(queries @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)  # [B, 2, N]
        return self.read((weights @ values).flatten(1))


def train_tower(
    vlm: DiffusionVLM, train: list[Item], val: list[Item], steps: int, batch_size: int, seed: int
) -> list[dict]:
    """Train the vision tower and projector (not the language model) with a `ColourReadout` head on
    `train`; the head's validation accuracy every 100 steps."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    images = {q.image: Image.open(q.image).convert("RGB") for q in train + val}
    head = ColourReadout(vlm.model.config.text_config.hidden_size)
    tower = vlm.vision_parameters()
    optimizer = torch.optim.AdamW(tower + list(head.parameters()), lr=1e-3, weight_decay=0.01)

    def logits(batch: list[Item]) -> torch.Tensor:
        chosen = torch.tensor([colours(q.question) for q in batch])
        return head(visual_tokens(vlm, [images[q.image] for q in batch]), chosen)

    def labels(batch: list[Item]) -> torch.Tensor:
        return torch.tensor([ANSWERS.index(q.key) for q in batch])

    log, started = [], time.perf_counter()
    vlm.model.train()
    for step in tqdm(range(1, steps + 1), desc="tower + readout"):
        batch = rng.sample(train, batch_size)
        loss = F.cross_entropy(logits(batch), labels(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            vlm.model.eval()
            with torch.no_grad():
                right = sum(int((logits(val[k : k + 64]).argmax(-1) == labels(val[k : k + 64])).sum())
                            for k in range(0, len(val), 64))  # fmt: skip
            vlm.model.train()
            log.append({"step": step, "loss": loss.item(), "val": 100 * right / len(val),
                        "seconds": time.perf_counter() - started})  # fmt: skip
    vlm.model.eval()
    return log


def other_tasks(vlm: DiffusionVLM, split_file: Path) -> dict[str, float]:
    """Accuracy per task of every task but spatial (each record's first question), `ar` decoding."""
    items = [item for item in read_items(split_file) if item.task != TASK]
    scores = score_answers(items, lambda item: vlm.generate(item.question, [item.image], "ar", 128))
    return {task: score.summary()["accuracy"] for task, score in scores.items()} | {
        "mean": mean_accuracy(scores)
    }


def run_arm(arm: str, data: Path, work: Path, args: argparse.Namespace) -> dict:
    """Fine-tune the AR base as `arm` says; its validation accuracy before and after."""
    question_first, all_tasks = arm == "question-first", arm.endswith("-all-tasks")
    val = questions(data / "val.json")
    start, result = args.base, {}
    if arm.startswith("tower-first"):
        start = work / f"tower-{args.head_steps}-steps-seed-{args.seed}"  # one per readout setting
        readout = start / "readout.json"
        if not readout.exists():  # one readout run serves both tower-first arms
            vlm = load(args.base)
            train = questions(data / "train.json", first_only=True)
            log = train_tower(vlm, train, val, args.head_steps, args.batch_size, args.seed)
            vlm.save_pretrained(start)
            readout.write_text(json.dumps(log))
        result["readout"] = json.loads(readout.read_text())

    def evaluate(model: str | Path) -> dict:
        vlm = load(model)
        scores = {"spatial": accuracy(vlm, val, question_first)}
        return scores | ({"other": other_tasks(vlm, data / "val.json")} if all_tasks else {})

    result["before"] = evaluate(start)
    out = work / arm
    started = time.perf_counter()
    config = ar_config(args.ar_steps, args.lr, args.batch_size, args.seed)
    train_file = data / "train.json" if all_tasks else training_file(data / "train.json", question_first)
    convert(start, train_file, out, config)
    result["ar_minutes"] = (time.perf_counter() - started) / 60
    result["after"] = evaluate(out)
    return result


def markdown(results: dict, settings: dict) -> str:
    lines = [
        "# Where the demo loses `spatial`: tower or language model",
        "",
        f"`python -m benchmarks.binding_study --arms {','.join(results)}` (base `{settings['base']}`; "
        f"{settings['ar_steps']} AR steps of batch {settings['batch_size']}, lr {settings['lr']}, on "
        "single-turn spatial records, or for `-all-tasks` on the whole training split; the readout "
        f"{settings['head_steps']} steps). Spatial: every spatial validation question "
        f"({settings['val_questions']}), `ar` decoding; chance given the axis is 50%. Other tasks: the "
        "mean over the 10 other tasks (each validation record's first question).",
        "",
        "| arm | spatial before | spatial after | other tasks before | other tasks after | AR minutes "
        "| readout accuracy (step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        readout = ", ".join(f"{x['val']:.1f} ({x['step']})" for x in r.get("readout", [])) or "-"
        other = [f"{r[k]['other']['mean']:.1f}" if "other" in r[k] else "-" for k in ("before", "after")]
        lines.append(
            f"| `{arm}` | {r['before']['spatial']:.1f} | {r['after']['spatial']:.1f} | {other[0]} | "
            f"{other[1]} | {r['ar_minutes']:.1f} | {readout} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="demo-ar", help="the AR base to fine-tune (default: demo-ar)")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"comma-separated, of {', '.join(ARMS)} (default: the first 4)",
    )
    parser.add_argument("--ar-steps", type=int, default=600, help="AR training steps per arm (default: 600)")
    parser.add_argument(
        "--head-steps", type=int, default=400, help="tower-first's readout steps (default: 400)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default="runs/binding_study", help="data and checkpoints (default: runs/binding_study)"
    )
    parser.add_argument("--out", default=None, help="also write OUT.md (the table) and OUT.json")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    work = Path(args.workdir)
    data = work / "data"
    if not all((data / f"{split}.json").exists() for split in ("train", "val")):  # built once, deterministic
        DemoRecipe().build_data(data, splits=("train", "val"))
    results = {arm: run_arm(arm, data, work / "checkpoints", args) for arm in arms}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}
    settings["val_questions"] = len(questions(data / "val.json"))
    text = markdown(results, settings)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text)
        Path(f"{args.out}.json").write_text(
            json.dumps({"settings": settings, "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
