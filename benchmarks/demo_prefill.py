"""The prefill cost of a demo's vision choice: visual tokens, vision-tower time and time to first
token, the shipped demo against an earlier commit's, side by side on the same test items.

    OMP_NUM_THREADS=2 python -m benchmarks.demo_prefill --old-rev e76036a \
        --out benchmarks/results/demo_prefill

Each model sees the test split rendered at its own training resolution (the splits are regenerated
from the same seeds, so the scenes are the same). Time to first token is `generate` with one new
token: processor, vision tower, prefill, first token. Medians over the first `--per-task` test items
of each task, after one untimed warm-up; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.demo_versions import demo_side, weights_at
from fast_dvlm import load
from fast_dvlm.data.build import build_splits
from fast_dvlm.eval.accuracy import read_items
from fast_dvlm.prompt import encode_prompt
from fast_dvlm.vlm import DiffusionVLM


@torch.inference_mode()
def measure(vlm: DiffusionVLM, split: Path, per_task: int) -> dict:
    tested = read_items(split, per_task)
    tested = tested[:1] + tested  # the first answer warms up
    image_token = vlm.tokenizer.convert_tokens_to_ids(vlm.family.image_token)
    tower, ttft, tokens = [], [], []
    for k, item in enumerate(tested):
        batch = encode_prompt(vlm.processor, item.question, [item.image])
        pixels = {key: value for key, value in batch.items() if key.startswith(("pixel", "image_grid"))}
        started = time.perf_counter()
        vlm.family.image_features(vlm.model, pixels)  # as decoding runs it (the layout included)
        tower_seconds = time.perf_counter() - started
        out = vlm.generate(item.question, [item.image], "ar", max_new_tokens=1)
        if k:  # the first item warms up
            tower.append(tower_seconds)
            ttft.append(out.seconds)
            tokens.append(int((batch["input_ids"] == image_token).sum()))
    return {
        "visual tokens": statistics.median(tokens),
        "parameters (M)": sum(p.numel() for p in vlm.model.parameters()) / 1e6,
        "vision tower ms": 1000 * statistics.median(tower),
        "TTFT ms": 1000 * statistics.median(ttft),
        "items": len(ttft),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old-rev", required=True, help="git revision whose shipped demo to compare against")
    parser.add_argument("--model", default="demo", help="shipped model name (default: demo)")
    parser.add_argument("--per-task", type=int, default=5, help="timed test items per task")
    parser.add_argument("--workdir", default="runs/demo_prefill", help="where the two test splits are built")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = weights_at(args.old_rev, args.model, Path(tmp))
        for label, source, revision in (
            (f"{args.model} at {args.old_rev}", old, args.old_rev),
            (f"{args.model} now", args.model, None),
        ):
            vlm, side = load(source), demo_side(revision)
            folder = Path(args.workdir) / str(side)
            split = build_splits(folder, {"test": args.per_task}, side, splits=("test",))["test"]
            rows[label] = {"family": vlm.family.name, "image side": side} | measure(vlm, split, args.per_task)
    columns = list(next(iter(rows.values())))
    table = [f"| model | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        table.append(f"| {label} | {' | '.join(cells)} |")
    print("\n".join(table))
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
        Path(f"{args.out}.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
