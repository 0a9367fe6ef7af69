"""Accuracy of the shipped demo AR base against an earlier commit's, on the same scenes.

    python -m benchmarks.demo_versions --old-rev e76036a --split val \
        --out benchmarks/results/demo_versions_val

The earlier weights come straight out of git (`git archive` of the assets folder at that commit), so a
comparison quoted in the README can be rerun after the shipped weights change. Each model answers the
split rendered at the resolution it was trained at (`DEMO_SIDE` at its commit): the splits are built
from the same seeds, so both see the same scenes and questions.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from fast_dvlm import load
from fast_dvlm.data.build import build_splits
from fast_dvlm.data.task import DEMO_SIDE
from fast_dvlm.demo.recipe import DemoRecipe
from fast_dvlm.eval.accuracy import mean_accuracy, read_items, score_answers

ASSET = "src/fast_dvlm/assets"
REPO = Path(__file__).resolve().parent.parent


def weights_at(revision: str, name: str, into: Path) -> Path:
    """Unpack `assets/<name>` as it was at `revision` into `into`."""
    archive = subprocess.run(
        ["git", "archive", revision, f"{ASSET}/{name}"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / ASSET / name


def demo_side(revision: str | None) -> int:
    """`DEMO_SIDE` (the shipped demo's training resolution) at `revision`; None: now."""
    if revision is None:
        return DEMO_SIDE
    source = subprocess.run(
        ["git", "show", f"{revision}:src/fast_dvlm/data/task.py"], cwd=REPO, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return int(re.search(r"^DEMO_SIDE = (\d+)", source, re.M).group(1))


def split_at(folder: Path, split: str, side: int, per_task: int | None) -> Path:
    """`split` (val or test) of the demo data rendered at `side` pixels, built once into `folder/side`."""
    count = per_task or DemoRecipe().eval_per_task
    return build_splits(folder / str(side), {split: count}, side, splits=(split,))[split]


def task_accuracy(model: str | Path, split: Path, per_task: int | None) -> dict[str, float]:
    vlm = load(model)
    scores = score_answers(
        read_items(split, per_task),
        lambda it: vlm.generate(it.question, [it.image], "ar", 128),
        desc=str(model),
    )
    return {"mean": mean_accuracy(scores)} | {task: s.summary()["accuracy"] for task, s in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--old-rev", required=True, help="git revision whose shipped weights to compare against"
    )
    parser.add_argument("--model", default="demo-ar", help="shipped model name (default: demo-ar)")
    parser.add_argument("--split", choices=("val", "test"), required=True, help="which held-out split")
    parser.add_argument("--per-task", type=int, default=None, help="items per task (default: all)")
    parser.add_argument("--workdir", default="runs/demo_versions", help="where the splits are built")
    parser.add_argument("--out", default=None, help="also write the table to OUT.md")
    args = parser.parse_args()
    folder = Path(args.workdir) / args.split
    with tempfile.TemporaryDirectory() as tmp:
        old_split = split_at(folder, args.split, demo_side(args.old_rev), args.per_task)
        old = task_accuracy(weights_at(args.old_rev, args.model, Path(tmp)), old_split, args.per_task)
    new = task_accuracy(args.model, split_at(folder, args.split, DEMO_SIDE, args.per_task), args.per_task)
    lines = [f"| task | {args.model} at {args.old_rev} | {args.model} now |", "|---|---|---|"]
    lines += [f"| {task} | {old[task]:.1f} | {new[task]:.1f} |" for task in new]
    print("\n".join(lines))
    if args.out:
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
