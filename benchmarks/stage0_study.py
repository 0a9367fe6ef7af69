"""How fast the demo's vision tower learns to read, under stage 0 (`fast_dvlm.demo.vision_pretrain`).

    OMP_NUM_THREADS=1 python benchmarks/stage0_study.py --tasks sign --steps 400 --name sign \
        --out benchmarks/results/stage0_study.jsonl

A FastVLM-family tiny model (the tower the new demo uses) is trained by stage 0 on the chosen tasks
of a split built at `--side` pixels (`--data`, built there if missing), and the head's validation
accuracy per task is appended to `--out` every `--every` steps, one JSON line per evaluation, with
the run's settings. Glyph tasks (sign, arithmetic, steps, receipt, diagram) are where the demo loses
accuracy; this isolates whether the tower, its head, the loss or the schedule is to blame.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from unittest import mock


def study(args: argparse.Namespace) -> None:
    import torch
    from transformers import get_scheduler

    import fast_dvlm.models.fast_vlm as fast_vlm
    from fast_dvlm.data.build import build_splits
    from fast_dvlm.demo.recipe import tokenizer_corpus
    from fast_dvlm.demo.vision_pretrain import VisionPretrainer, read_scenes
    from fast_dvlm.models.family import TinySize
    from fast_dvlm.models.tiny import build_tiny_model
    from fast_dvlm.vlm import DiffusionVLM

    data = Path(args.data)
    if not (data / "train.json").exists():
        build_splits(data, {"train": args.per_task, "val": 60, "test": 60}, args.side, 0.8)
    tower_args = {"layers": [int(n) for n in args.layers.split(",")]}
    if len(tower_args["layers"]) != 5:
        raise SystemExit(f"--layers: five block counts, one a stage, got {args.layers!r}")
    if args.train_time_tower:  # FastViT's multi-branch blocks with batch norm, as timm trains them
        tower_args["inference_mode"] = False
    size = TinySize(
        hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=768,
        vision_hidden_size=4 * args.width, image_size=args.side, max_position_embeddings=1024,
    )  # fmt: skip
    demo_args = fast_vlm.tiny_fastvit_args
    with mock.patch.object(fast_vlm, "tiny_fastvit_args", lambda size: demo_args(size) | tower_args):
        vlm = DiffusionVLM(  # this model only: the demo's own tower args are back afterwards
            *build_tiny_model("fast_vlm", size, tokenizer_corpus(data / "train.json"), 1024, 0)
        )
    every_scene = read_scenes(data / "train.json")
    chosen = set(args.tasks.split(",")) if args.tasks != "all" else {s.task for s in every_scene}
    scenes = [s for s in every_scene if s.task in chosen]
    val = [s for s in read_scenes(data / "val.json", first_only=True) if s.task in chosen]
    torch.manual_seed(0)
    trainer = VisionPretrainer(vlm, every_scene)  # every label, so runs on subsets share one head shape
    if args.init:  # a curriculum: go on from an earlier run's tower and head (fresh optimizer)
        trainer.load_weights(torch.load(args.init))
    vlm.model.train()
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_scheduler(args.lr_schedule, optimizer, args.schedule // 40, args.schedule)
    rng = random.Random(0)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "data")}
    focus_order = [t for t in args.focus_order.split(",") if t in chosen] if args.focus_steps else []
    by_task = {task: [s for s in scenes if s.task == task] for task in chosen}
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        phase = (step - 1) // args.focus_steps if args.focus_steps else len(focus_order)
        if phase < len(focus_order):  # half the batch, and half the loss, on one task
            focus = focus_order[phase]
            half = args.batch_size // 2
            batch = rng.sample(by_task[focus], half) + rng.sample(scenes, args.batch_size - half)
        else:
            focus, batch = None, rng.sample(scenes, args.batch_size)
        loss = trainer.train_step(batch, args.gamma, optimizer, scheduler, focus)
        if step % args.every == 0 or step == args.steps:
            vlm.model.eval()
            accuracy = trainer.accuracy(val)
            vlm.model.train()
            seconds = round(time.perf_counter() - started)
            row = {"step": step, "seconds": seconds, "loss": round(loss, 3)}
            row |= {"mean": round(sum(accuracy.values()) / len(accuracy), 1)}
            row |= {task: round(value, 1) for task, value in accuracy.items()}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as out:
                out.write(json.dumps({"settings": settings} | row) + "\n")
            if args.save:
                torch.save(trainer.weights(), args.save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what this run is called in the results")
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--schedule", type=int, default=4000, help="cosine length (steps), as in a full run")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--lr-schedule", default="cosine", help="a transformers scheduler name")
    parser.add_argument("--focus-steps", type=int, default=0, help="steps of each task's focused phase")
    parser.add_argument(
        "--focus-order",
        default="sign,steps,arithmetic,receipt,diagram,handwriting,chart,map,counting,presence,spatial",
        help="the tasks focused on, in turn, before the plain mix (with --focus-steps)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma", type=float, default=2.0, help="focal loss exponent (0: cross-entropy)")
    parser.add_argument("--width", type=int, default=16, help="the tower's first-stage width (x2 per stage)")
    parser.add_argument("--layers", default="1,1,1,1,1", help="blocks in each of the tower's five stages")
    parser.add_argument("--side", type=int, default=192, help="image side in pixels (stride 64)")
    parser.add_argument("--train-time-tower", action="store_true", help="FastViT with batch norm branches")
    parser.add_argument("--per-task", type=int, default=3000, help="training images per task, if building")
    parser.add_argument("--data", default="runs/stage0/data", help="split folder (built if missing)")
    parser.add_argument("--out", default="benchmarks/results/stage0_study.jsonl")
    parser.add_argument("--init", default=None, help="start from a --save file of an earlier run")
    parser.add_argument("--save", default=None, help="keep the tower and head here at each evaluation")
    study(parser.parse_args())


if __name__ == "__main__":
    main()
