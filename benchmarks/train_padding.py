"""Seconds per training step against padding: the whole batch at once, batches grouped by length
(`group_by_length`) and each batch run in chunks of similar length (`length_split`), on demo data.

    OMP_NUM_THREADS=2 python -m benchmarks.train_padding --base runs/demo4/ar \
        --data runs/demo4/data/train.json --out benchmarks/results/train_padding

Each arm trains `--steps` steps of the demo recipe's AR stage (or, with `--stage conversion`, its
conversion stage) into a scratch folder, arms alternating for `--rounds` rounds; the figure is the
median step time without each run's first 10 steps. The fill is the share of the padded rows that
the samples' own tokens (prompt, vision, answers) take, over the same steps (a conversion row also
holds the noisy copies of the answers, not counted). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from fast_dvlm import load
from fast_dvlm.demo.recipe import DemoRecipe, ar_config, convert_config
from fast_dvlm.train.config import TrainConfig
from fast_dvlm.train.data import ConversationDataset
from fast_dvlm.train.trainer import LOG_FILE, Schedule, convert, length_chunks

ARMS = {
    "whole batch": {},
    "group_by_length": {"group_by_length": True},
    "length_split 2": {"length_split": 2},
    "length_split 4": {"length_split": 4},
}


def stage_config(stage: str, steps: int) -> TrainConfig:
    """The demo recipe's AR or conversion stage, `steps` long (the recipe's first seed, a short warm-up)."""
    recipe = DemoRecipe()
    if stage == "ar":
        return replace(ar_config(steps, recipe.ar_lr, recipe.batch_size, recipe.seed), warmup_steps=5)
    return replace(convert_config(steps, recipe.convert_lr, recipe.batch_size, recipe.seed), warmup_steps=5)


def fill(config: TrainConfig, dataset: ConversationDataset) -> float:
    """Real tokens over padded row tokens in the steps `config` trains (text and vision tokens)."""
    lengths = dataset.text_lengths() if config.group_by_length else None
    schedule = Schedule(config, len(dataset), 0, 1, lengths)
    real = padded = 0
    for step in range(config.steps):
        samples = [dataset[i] for i in schedule.indices(step, 0)]
        for chunk, _ in length_chunks(samples, config.length_split):
            tokens = [samples[k].input_ids.shape[0] for k in chunk]
            real, padded = real + sum(tokens), padded + len(tokens) * max(tokens)
    return real / padded


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="checkpoint to train from (e.g. runs/demo4/ar)")
    parser.add_argument("--data", required=True, help="training split")
    parser.add_argument("--stage", choices=("ar", "conversion"), default="ar")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the arms")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    vlm = load(args.base)
    dataset = ConversationDataset(args.data, vlm.processor, vlm.family, progress=False)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm, settings in ARMS.items():
            config = replace(stage_config(args.stage, args.steps), **settings)
            with tempfile.TemporaryDirectory() as out:
                convert(args.base, args.data, out, config, resume=False, progress=False)
                lines = (Path(out) / LOG_FILE).read_text().splitlines()
            times[arm] += [json.loads(line)["seconds"] for line in lines[10:]]
            print(f"{arm}: median {statistics.median(times[arm]):.3f} s/step so far", flush=True)
    rows = {}
    for arm, settings in ARMS.items():
        seconds = statistics.median(times[arm])
        rows[arm] = {
            "seconds per step": seconds,
            "vs whole batch": statistics.median(times["whole batch"]) / seconds,
            "tokens real": fill(replace(stage_config(args.stage, args.steps), **settings), dataset),
        }
    table = [
        f"{args.stage} stage from {args.base}, {args.steps} steps x {args.rounds} rounds, medians:",
        "",
        "| arm | s/step | speed-up | samples' tokens / padded row tokens |",
        "|---|---|---|---|",
    ]
    table += [
        f"| {arm} | {r['seconds per step']:.3f} | {r['vs whole batch']:.2f}x | {r['tokens real']:.0%} |"
        for arm, r in rows.items()
    ]
    print("\n".join(table))
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "arms": rows}, indent=1))
        Path(f"{args.out}.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
