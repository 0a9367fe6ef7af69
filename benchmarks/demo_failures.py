"""Where the demo's AR base goes wrong, task by task: reading or binding.

    python -m benchmarks.demo_failures --split val --out benchmarks/results/demo_failures_val

Every wrong answer is sorted by what it says instead of the key:
- **bound wrong**: the answer to another question about the same image (the shape under another
  label, another bar's value, another receipt field, the inverse relation). The model read the
  image but tied the question to the wrong part of it.
- for multiple-choice tasks (map, counting) the answer states its content and then a letter ("The
  red region is Lima, option A"): whether the content is right, and whether the letter is the one
  the question lists for that content (a lookup inside the question's own text).
- presence: how often it says yes (the split is half yes, half no).
- steps: how many of the three numbers its first step lists are the boxes' numbers, in place, and
  how often every sum it writes follows from its own terms (reading against adding).
The rest is "other": a value that appears nowhere in the image's questions (misread or invented).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.demo_versions import split_at
from fast_dvlm import load
from fast_dvlm.data import get_task
from fast_dvlm.data.numbers import STEP_NUMBERS
from fast_dvlm.data.task import DEMO_SIDE, ChoiceTask, Task
from fast_dvlm.demo.vision_pretrain import read_scenes

OPTION = re.compile(r"\b([A-D])\. (\S+)")
SUM = re.compile(r"(\d+) \+ (\d+) = (\d+)")
FINAL = re.compile(r"Final answer: (\d+)")


def choice_reading(question: str, answer: str, key: str) -> tuple[bool, bool] | None:
    """(content right, letter agrees with the content) for a multiple-choice answer, or None when the
    answer names no single option's content."""
    options = dict(OPTION.findall(question))
    stated = answer.split("option")[0]
    named = [letter for letter, value in options.items() if re.search(rf"\b{re.escape(value)}\b", stated)]
    letters = re.findall(r"\boption ([A-D])\b", answer)
    if len(named) != 1 or not letters:
        return None
    return named[0] == key, letters[-1] == named[0]


def step_reading(answer: str, reference: str) -> tuple[int, bool] | None:
    """(numbers listed in their right place, every sum follows from its terms and the final answer is
    the last sum) for a `steps` answer against its reference answer, or None when it lists no numbers."""
    read, truth = STEP_NUMBERS.search(answer), STEP_NUMBERS.search(reference)
    if read is None or truth is None:
        return None
    placed = sum(a == b for a, b in zip(read.groups(), truth.groups(), strict=True))
    sums, final = SUM.findall(answer), FINAL.search(answer)
    follows = bool(sums) and all(int(a) + int(b) == int(c) for a, b, c in sums)
    return placed, follows and final is not None and final.group(1) == sums[-1][2]


def classify(
    task: Task, question: str, answer: str, key: str, others: set[str], reference: str = ""
) -> dict[str, int]:
    """The counts one answer adds to its task's row (`others`: the keys of the image's other questions,
    `reference`: the reference answer, which `steps` answers are read against)."""
    right = task.score(answer, key)
    row = {"items": 1, "right": int(right)}
    if task.name == "steps" and (reading := step_reading(answer, reference)) is not None:
        row["numbers"], row["numbers placed"], row["sums follow"] = 3, reading[0], int(reading[1])
    if isinstance(task, ChoiceTask):
        reading = choice_reading(question, answer, key)
        row["stated one option"] = int(reading is not None)
        if reading is not None:
            row["content right"], row["letter agrees"] = int(reading[0]), int(reading[1])
    elif task.name == "presence":
        row["said yes"] = int(task.score(answer, "yes"))
    elif not right and (others := others - {key}):  # one question per image: nothing to bind to
        row["bound wrong"] = int(any(task.score(answer, other) for other in others))
    return row


def analyse(model: str, split: Path, per_task: int | None) -> dict[str, dict[str, int]]:
    """Counts per task: items, right, and the sorts of wrong answers described above."""
    vlm = load(model)
    scenes, seen = [], defaultdict(int)
    for scene in read_scenes(split):
        seen[scene.task] += 1
        if per_task is None or seen[scene.task] <= per_task:
            scenes.append(scene)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for scene in tqdm(scenes, desc=str(model)):
        (question, key), others = scene.questions[0], {k for _, k in scene.questions[1:]}
        answer = vlm.generate(question, [scene.image], "ar", 128).text
        row = classify(get_task(scene.task), question, answer, key, others, scene.answer)
        for name, count in row.items():
            counts[scene.task][name] += count
    return {name: dict(row) for name, row in counts.items()}


def table(counts: dict[str, dict[str, int]]) -> str:
    def share(row: dict, part: str, whole: str) -> str:
        return f"{100.0 * row[part] / row[whole]:.0f}%" if part in row and row.get(whole) else "-"

    lines = [
        "| task | right | wrong: another question's answer | choice: content right | choice: letter agrees "
        "with content | presence: says yes | steps: numbers read, in place | steps: sums follow their "
        "terms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in counts.items():
        wrong = row["items"] - row["right"]
        bound = f"{row['bound wrong']} of {wrong}" if "bound wrong" in row else "-"
        stated = "stated one option"
        cells = [share(row, "right", "items"), bound, share(row, "content right", stated),
                 share(row, "letter agrees", stated), share(row, "said yes", "items"),
                 share(row, "numbers placed", "numbers"), share(row, "sums follow", "items")]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo-ar", help="model to analyse (default: demo-ar)")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="which held-out split (default: val)"
    )
    parser.add_argument(
        "--split-file", default=None, help="analyse this split JSON instead (e.g. the recipe's train.json)"
    )
    parser.add_argument("--per-task", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--workdir", default="runs/demo_versions", help="where the split is built")
    parser.add_argument("--out", default=None, help="also write OUT.md (the table) and OUT.json (the counts)")
    args = parser.parse_args()
    split = args.split_file or split_at(Path(args.workdir) / args.split, args.split, DEMO_SIDE, None)
    counts = analyse(args.model, Path(split), args.per_task)
    text = table(counts)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text + "\n")
        Path(f"{args.out}.json").write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
