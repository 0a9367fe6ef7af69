"""Seconds per AR training step with and without `group_by_length`, alternating, on demo data.

    python benchmarks/group_by_length.py --base runs/demo/vision --data runs/demo/data/train.json

(`runs/demo` from `fast-dvlm make-demo --workdir runs/demo`.) Each run trains 60 steps of the demo
recipe's AR stage into a scratch folder; the median excludes the first 10 steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from fast_dvlm.demo.recipe import DemoRecipe, ar_config
from fast_dvlm.train.trainer import LOG_FILE, convert


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="checkpoint to train from (the recipe's vision stage)")
    parser.add_argument("--data", required=True, help="training split")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="alternating pairs of runs")
    args = parser.parse_args()
    recipe = DemoRecipe()
    for _ in range(args.rounds):
        for grouped in (False, True):
            config = replace(
                ar_config(args.steps, recipe.ar_lr, recipe.batch_size, recipe.seed),
                group_by_length=grouped,
                warmup_steps=5,
            )
            with tempfile.TemporaryDirectory() as out:
                convert(args.base, args.data, out, config, resume=False, progress=False)
                lines = (Path(out) / LOG_FILE).read_text().splitlines()
            seconds = statistics.median(json.loads(line)["seconds"] for line in lines[10:])
            print(f"group_by_length={grouped}: median {seconds:.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
