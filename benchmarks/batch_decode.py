"""Batched decoding on the demo: tokens/s of `generate_batch` at batch 1, 2, 4, 8 against `generate`
one prompt at a time over the same prompts (the demo's test split), every answer checked against its
batch-1 answer; for `diffusion`, each answer that differs, with the decision that made it differ.

    OMP_NUM_THREADS=2 python benchmarks/batch_decode.py --per-task 8 --repeats 3 \
        --json benchmarks/results/batch_decode.json

The prompts come tasks in turn (`--order interleaved`, as mixed traffic arrives) or task by task
(`--order grouped`, the split's order: batches of one task, long answers together). Speeds are wall
clock over the whole split, best of `--repeats` runs, modes and batch sizes
interleaved within one run, so the ratios are within one run on one machine state. The lossless
modes must give batch-1's tokens exactly (the script exits 1 otherwise). A differing diffusion answer
is explained by the smallest decision margin of its batch-1 decoding in the block where the two first
part: how close a confidence came to τ, or the two most confident candidates came to each other,
when that block was decoded (a near-tie the batched pass's float rounding can flip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from fast_dvlm import load
from fast_dvlm.decoding.diffusion import BlockDiffusionDecoder
from fast_dvlm.demo.recipe import DemoRecipe
from fast_dvlm.eval.accuracy import read_items

MODES = {
    "ar": {},
    "spec-linear": {},
    "spec-quadratic": {"block_size": 8},
    "diffusion": {},
}
SIZES = (1, 2, 4, 8)
ORDERS = ("interleaved", "grouped")  # see demo_prompts


def demo_split(workdir: Path) -> Path:
    return DemoRecipe().build_data(workdir, splits=("test",))["test"]


def demo_prompts(workdir: Path, per_task: int, order: str = "interleaved") -> tuple[list, list]:
    """The test split's first `per_task` questions of each task and their images: `interleaved`
    takes one of each task in turn, as mixed traffic arrives; `grouped` keeps the split's task by
    task order, where the long-answer task comes last and ends a batched run with a tail of a few
    long answers decoding in a mostly empty batch."""
    items = read_items(demo_split(workdir), per_task)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "interleaved":  # by rank within its task; the sort is stable, so tasks keep their order
        rank: Counter[str] = Counter()
        ranked = []
        for item in items:
            rank[item.task] += 1
            ranked.append((rank[item.task], item))
        items = [item for _, item in sorted(ranked, key=lambda pair: pair[0])]
    return [i.question for i in items], [[i.image] for i in items]


def decode(vlm, mode: str, settings: dict, size: int, prompts, images, cap: int) -> tuple[float, list]:
    """Seconds and answers of the whole split: `generate` one by one at size 1, else `generate_batch`."""
    start = time.perf_counter()
    if size == 1:
        outs = [vlm.generate(p, i, mode, cap, **settings) for p, i in zip(prompts, images, strict=True)]
    else:
        outs = vlm.generate_batch(prompts, images, mode, cap, max_batch_size=size, **settings)
    return time.perf_counter() - start, outs


def differing(a: list, b: list) -> list[int]:
    return [k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x.token_ids != y.token_ids]


class Margins:
    """Records, per pass of the diffusion decoder, the token index of the block and the pass's
    smallest decision margin: min |confidence - τ| over the candidates, and the gap between the two
    most confident candidates (which decides the forced unmask when none clears τ)."""

    def __init__(self) -> None:
        self.log: list[tuple[int, float]] = []  # (first answer index of the pass's span, margin)
        self.offset = 0

    def install(self):
        original = BlockDiffusionDecoder.unmask
        margins = self

        def unmask(decoder, block, masked, logits, first_position):
            span = slice(first_position, first_position + logits.shape[0])
            probs = logits.float().clone()
            probs[:, decoder.options.mask_id] = float("-inf")
            confidence = probs.softmax(-1).amax(-1).cpu()[masked[span]]
            if confidence.numel():
                tau = float((confidence - decoder.options.threshold).abs().min())
                top = confidence.topk(min(2, confidence.numel())).values
                gap = float(top[0] - top[1]) if top.numel() > 1 else 1.0
                margins.log.append((first_position, min(tau, gap)))
            return original(decoder, block, masked, logits, first_position)

        BlockDiffusionDecoder.unmask = unmask
        return original


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--per-task", type=int, default=8, help="items per task of the test split")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--order", choices=ORDERS, default="interleaved",
        help="the prompts' order: tasks in turn, or task by task (see demo_prompts)",
    )  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    vlm = load(args.model)
    prompts, images = demo_prompts(Path(args.workdir), args.per_task, args.order)
    cap = args.max_new_tokens
    result: dict = {"model": args.model, "items": len(prompts), "order": args.order,
                    "threads": torch.get_num_threads(), "modes": {}}  # fmt: skip
    failed = False
    for mode in args.modes.split(","):
        settings = MODES[mode]
        vlm.generate(prompts[0], images[0], mode, cap, **settings)  # warm-up (and the pass-cost model)
        best: dict[int, float] = {}
        answers: dict[int, list] = {}
        for _ in range(args.repeats):
            for size in SIZES:
                seconds, answers[size] = decode(vlm, mode, settings, size, prompts, images, cap)
                best[size] = min(best.get(size, float("inf")), seconds)
        tokens = sum(len(o.token_ids) for o in answers[1])
        row = {"tokens": tokens, "sizes": {}}
        for size in SIZES:
            differ = differing(answers[size], answers[1])
            rate = sum(len(o.token_ids) for o in answers[size]) / best[size]
            row["sizes"][size] = {
                "seconds": best[size],
                "tokens_per_s": rate,
                "speedup_vs_batch_1": rate / (tokens / best[1]),
                "differ_from_batch_1": differ,
                "nfe": sum(o.nfe for o in answers[size]),
            }
            failed |= bool(differ) and mode != "diffusion"
            print(
                f"{mode} batch {size}: {rate:.0f} tokens/s, {rate / (tokens / best[1]):.2f}x batch 1, "
                f"{len(differ)} answers differ from batch 1",
                flush=True,
            )
        if mode == "diffusion":
            row["differences"] = explain(vlm, prompts, images, cap, settings, answers)
            for d in row["differences"]:
                print(d, flush=True)
        result["modes"][mode] = row
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if failed else 0


def explain(vlm, prompts, images, cap, settings, answers) -> list[dict]:
    """For each diffusion answer that differs at some batch size: where it first differs and the
    smallest decision margin batch 1 had in the block holding that token."""
    out = []
    block = settings.get("block_size", vlm.settings.block_size)
    margins = Margins()
    original = margins.install()
    try:
        for k in sorted({k for size in SIZES[1:] for k in differing(answers[size], answers[1])}):
            margins.log = []
            alone = vlm.generate(prompts[k], images[k], "diffusion", cap, **settings)
            for size in SIZES[1:]:
                batched = answers[size][k].token_ids
                if batched == alone.token_ids:
                    continue
                first = next(
                    (j for j, (a, b) in enumerate(zip(batched, alone.token_ids, strict=False)) if a != b),
                    min(len(batched), len(alone.token_ids)),
                )
                # the answer's first token comes from the prefill; answer token j sits at block position
                # (j - 1) % block + 1 of block (j - 1) // block
                blk = (first - 1) // block
                passes = blocks_of(margins.log)
                smallest = min(passes[blk]) if blk < len(passes) and passes[blk] else None
                out.append({"item": k, "batch_size": size, "first_differing_token": first,
                            "smallest_margin_in_that_block": smallest,
                            "alone": vlm.tokenizer.decode(alone.token_ids, skip_special_tokens=True),
                            "batched": vlm.tokenizer.decode(batched, skip_special_tokens=True)})  # fmt: skip
    finally:
        BlockDiffusionDecoder.unmask = original
    return out


def blocks_of(log: list[tuple[int, float]]) -> list[list[float]]:
    """The margins of each block's passes: a block's passes start again at its first sub-block."""
    blocks: list[list[float]] = []
    last = None
    for first_position, margin in log:
        if last is None or first_position < last:
            blocks.append([])
        blocks[-1].append(margin)
        last = first_position
    return blocks


if __name__ == "__main__":
    sys.exit(main())
