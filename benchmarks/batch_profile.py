"""Where batched decoding's time goes on the demo: cProfile over the same prompts at batch 1
(`generate`, one by one) and batch N (`generate_batch`), each run's wall time split into the parts
every answer pays (the processor, the vision tower, the prompt pass) and decoding.

    OMP_NUM_THREADS=2 python benchmarks/batch_profile.py --per-task 4 --mode spec-linear

The per-prompt parts bound what batching can gain: if batch N's decoding cost nothing, batch N
would still take the processor, tower and prompt-pass time it measured. Times are under the
profiler (a few percent above plain runs); run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
from collections.abc import Sequence
from pathlib import Path

from batch_decode import ORDERS, decode, demo_prompts

from fast_dvlm import load

# the functions whose cumulative time is each part (file suffix, function name)
PARTS = {
    "processor": [("fast_dvlm/prompt.py", "encode_prompt")],
    "vision tower": [("models/fast_vlm.py", "embed_many"), ("models/qwen_vl.py", "embed_many")],
    "prompt pass": [("decoding/batch.py", "prefill")],  # batched; alone: Session.prefill (below)
}
ALONE_PROMPT_PASS = [("decoding/session.py", "prefill")]


def cumulative(stats: pstats.Stats, where: list[tuple[str, str]]) -> float:
    """Seconds spent in (and under) the listed functions, counted once each call from outside them."""
    total = 0.0
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():
        if any(file.endswith(suffix) and name == fn for suffix, fn in where):
            total += cum
    return total


def profile(vlm, mode: str, size: int, prompts, images, cap: int) -> dict[str, float]:
    decode(vlm, mode, {}, size, prompts, images, cap)  # warm-up, and the policy's history at size > 1
    prof = cProfile.Profile()
    prof.enable()
    seconds, _ = decode(vlm, mode, {}, size, prompts, images, cap)
    prof.disable()
    stats = pstats.Stats(prof)
    parts = {part: cumulative(stats, where) for part, where in PARTS.items()}
    if not parts["prompt pass"]:  # `generate` prefills through the session (Batch.prefill calls it too)
        parts["prompt pass"] = cumulative(stats, ALONE_PROMPT_PASS)
    parts["decoding"] = seconds - sum(parts.values())
    return {"seconds": seconds, **parts}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--mode", default="spec-linear")
    parser.add_argument("--per-task", type=int, default=4, help="items per task of the test split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--order", choices=ORDERS, default="interleaved")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    vlm = load(args.model)
    prompts, images = demo_prompts(Path(args.workdir), args.per_task, args.order)
    result = {"model": args.model, "mode": args.mode, "items": len(prompts), "order": args.order, "sizes": {}}
    for size in (1, args.batch_size):
        result["sizes"][size] = profile(vlm, args.mode, size, prompts, images, args.max_new_tokens)
    one, many = result["sizes"][1], result["sizes"][args.batch_size]
    print(f"| part | batch 1 s | batch {args.batch_size} s | gain |\n|---|---|---|---|")
    for part in ("seconds", *PARTS, "decoding"):
        print(
            f"| {'total' if part == 'seconds' else part} | {one[part]:.3f} | {many[part]:.3f} | "
            f"{one[part] / many[part]:.2f}x |"
        )
    fixed = sum(many[p] for p in PARTS)
    result["bound"] = one["seconds"] / fixed
    print(f"batch {args.batch_size} with free decoding could reach at most {result['bound']:.2f}x batch 1")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
