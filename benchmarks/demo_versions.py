"""Accuracy of the shipped demo AR base against an earlier commit's, on the same items.

    python benchmarks/demo_versions.py --old-rev 7e97d6e --split runs/demo/data/val.json
    python benchmarks/demo_versions.py --old-rev 7e97d6e --split runs/demo/data/test.json

The earlier weights come straight out of git (`git archive` of the assets folder at that commit), so a
comparison quoted in the README can be rerun after the shipped weights change.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

from fast_dvlm import load
from fast_dvlm.eval.accuracy import mean_accuracy, read_items, score_answers

ASSET = "src/fast_dvlm/assets"


def weights_at(revision: str, name: str, into: Path) -> Path:
    """Unpack `assets/<name>` as it was at `revision` into `into`."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", revision, f"{ASSET}/{name}"], cwd=repo, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / ASSET / name


def task_accuracy(model: str | Path, split: str, per_task: int | None) -> dict[str, float]:
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
    parser.add_argument("--split", required=True, help="a split file written by make-demo")
    parser.add_argument("--per-task", type=int, default=None, help="items per task (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = task_accuracy(weights_at(args.old_rev, args.model, Path(tmp)), args.split, args.per_task)
    new = task_accuracy(args.model, args.split, args.per_task)
    print(f"| task | {args.model} at {args.old_rev} | {args.model} now |\n|---|---|---|")
    for task in new:
        print(f"| {task} | {old[task]:.1f} | {new[task]:.1f} |")


if __name__ == "__main__":
    main()
