"""Decoding speed on this machine, for random-weight models of several sizes, in one run.

Two measurements per size:
1. the cost of one pass of n new tokens over a 200-token cache (what block decoding pays for
   parallelism, and how the quadratic mode's B^2-token pass grows with B);
2. whole answers with every decoding mode and transformers' `generate` on the same prompts.

Random weights make drafts poor (tokens/NFE near 1 except where a random model repeats itself),
so part 2 shows the engine's overhead per pass, not a converted model's speed-up; see
`fast-dvlm bench` on the demo model for that.

`--compile` measures `DiffusionVLM.compile()`d models; each mode answers once first, untimed, so
that compiling is not counted (benchmarks/decode_profile.py compares both in one run).

    python benchmarks/decode_speed.py --sizes small medium large --out benchmarks/results/decode_speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from fast_dvlm import DiffusionVLM
from fast_dvlm.decoding import Session
from fast_dvlm.eval.bench import answer
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.modes import HF_GENERATE
from fast_dvlm.prompt import ImageLike, encode_prompt

SIZES = {
    "small": TinySize(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688),
    "medium": TinySize(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376),
    "large": TinySize(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048),
}
HEAD_ROWS = 16384  # a head wider than the tiny tokenizer, closer to a real model's share of compute
TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64, 256, 1024)


def scene(seed: int) -> Image.Image:
    image = Image.new("RGB", (224, 224), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    for k in range(4):
        x, y = (seed * 37 + k * 53) % 180, (seed * 23 + k * 41) % 180
        draw.rectangle([x, y, x + 40, y + 40], fill=((k * 80) % 256, (seed * 60) % 256, 120))
    return image


@dataclass(frozen=True)
class ModeSpec:
    """One column of a speed table: a decoding mode with its settings."""

    label: str
    mode: str  # a decoding mode, or HF_GENERATE for transformers' own loop
    settings: dict = field(default_factory=dict)


DEFAULT_MODES = (
    ModeSpec(HF_GENERATE, HF_GENERATE),
    ModeSpec("ar", "ar"),
    ModeSpec("diffusion τ0.9", "diffusion", {"threshold": 0.9}),
    ModeSpec("diffusion τ0.7", "diffusion", {"threshold": 0.7}),
    ModeSpec("diffusion τ0.5", "diffusion", {"threshold": 0.5}),
    ModeSpec("spec-linear", "spec-linear"),
    ModeSpec("spec-quadratic B4", "spec-quadratic", {"block_size": 4}),
)


@torch.inference_mode()
def pass_cost_ms(
    vlm: DiffusionVLM, token_counts: Sequence[int], context: int = 200, repeats: int = 5
) -> dict[int, float]:
    """Median milliseconds of one language-model pass of n new tokens over a `context`-token cache."""
    session = Session(vlm.model, vlm.family)
    ids = torch.randint(0, len(vlm.tokenizer) - 1, (context,))
    session.forward(ids, torch.arange(context))
    costs = {}
    for n in token_counts:
        new = torch.randint(0, len(vlm.tokenizer) - 1, (n,))
        seq = torch.arange(context, context + n)
        times = []
        for _ in range(repeats + 1):  # the first run warms up and is discarded
            start = time.perf_counter()
            session.forward(new, seq)
            times.append(time.perf_counter() - start)
            session.rollback(context)
        costs[n] = 1000 * statistics.median(times[1:])
    return costs


def run_mode(
    vlm: DiffusionVLM, spec: ModeSpec, prompt: str, images: Sequence[ImageLike], max_new_tokens: int
):
    return answer(vlm, spec.mode, spec.settings, prompt, images, max_new_tokens)


def compare_modes(
    vlm: DiffusionVLM,
    prompts: Sequence[tuple[str, Sequence[ImageLike]]],
    modes: Sequence[ModeSpec] = DEFAULT_MODES,
    max_new_tokens: int = 64,
    repeats: int = 3,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Tokens/NFE and tokens/s of each mode over the same prompts, all in one run.

    Each (prompt, mode) is timed `repeats` times and its median taken; modes are interleaved per
    prompt so that machine noise hits them alike. Speed-up is relative to the first mode.
    """
    totals = {spec.label: {"tokens": 0, "nfe": 0, "seconds": 0.0} for spec in modes}
    jobs = [(p, spec) for p in prompts for spec in modes]
    for (prompt, images), spec in tqdm(jobs, desc="decoding", disable=not progress, leave=False):
        encode_prompt(vlm.processor, prompt, images)  # fail early on bad input, outside the timing
        runs = [run_mode(vlm, spec, prompt, images, max_new_tokens) for _ in range(repeats)]
        out = runs[0]
        totals[spec.label]["tokens"] += len(out.token_ids)
        totals[spec.label]["nfe"] += out.nfe
        totals[spec.label]["seconds"] += statistics.median(r.seconds for r in runs)
    base = totals[modes[0].label]
    base_rate = base["tokens"] / base["seconds"]
    return {
        label: {
            "tokens_per_nfe": t["tokens"] / t["nfe"],
            "tokens_per_s": t["tokens"] / t["seconds"],
            "speedup_vs_first": (t["tokens"] / t["seconds"]) / base_rate,
            "tokens": t["tokens"],
            "nfe": t["nfe"],
        }
        for label, t in totals.items()
    }


def markdown(results: dict) -> str:
    lines = ["## Cost of one pass over a 200-token cache (median ms; ratio to a 1-token pass)", ""]
    for name, r in results.items():
        if r.get("compiled"):
            lines += [
                f"{name}: compiled with `DiffusionVLM.compile()`, {r['compile_warmup_s']:.0f} s warm-up",
                "",
            ]
    lines.append("| model | params | " + " | ".join(f"{n} tok" for n in TOKEN_COUNTS) + " |")
    lines.append("|---|---|" + "---|" * len(TOKEN_COUNTS))
    for name, r in results.items():
        one = r["pass_ms"]["1"]
        cells = [f"{r['pass_ms'][str(n)]:.1f} ({r['pass_ms'][str(n)] / one:.1f}x)" for n in TOKEN_COUNTS]
        lines.append(f"| {name} | {r['params_m']:.0f}M | " + " | ".join(cells) + " |")
    lines += ["", "## Quadratic mode: one B²-token pass vs. the two B-token passes of the linear mode", ""]
    lines.append("| model | " + " | ".join(f"B={b}" for b in (2, 4, 8, 16, 32)) + " |")
    lines.append("|---|" + "---|" * 5)
    for name, r in results.items():
        ms = r["pass_ms"]
        cells = []
        for b in (2, 4, 8, 16, 32):
            quad = ms[str(b * b)] if str(b * b) in ms else float("nan")
            cells.append(f"{quad:.0f} vs {2 * ms[str(b)]:.0f} ms")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Whole answers (random weights, 64 new tokens)", ""]
    lines.append("| model | mode | tokens/NFE | tokens/s | vs hf-generate |")
    lines.append("|---|---|---|---|---|")
    for name, r in results.items():
        for label, m in r["modes"].items():
            lines.append(
                f"| {name} | {label} | {m['tokens_per_nfe']:.2f} | {m['tokens_per_s']:.1f} | "
                f"{m['speedup_vs_first']:.2f}x |"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        counts = [int(n) for n in r["pass_ms"]]
        left.plot(counts, list(r["pass_ms"].values()), marker="o", label=f"{name} ({r['params_m']:.0f}M)")
    left.set(xscale="log", yscale="log", xlabel="new tokens in the pass", ylabel="ms per pass")
    left.set_title("Cost of one pass (200-token cache)")
    left.legend()
    labels = list(next(iter(results.values()))["modes"])
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        xs = [k + i * width for k in range(len(labels))]
        right.bar(xs, [r["modes"][label]["tokens_per_s"] for label in labels], width, label=name)
    right.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(labels))], labels, rotation=30)
    right.set(ylabel="tokens/s", title="Whole answers, random weights")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--prompts", type=int, default=3, help="prompts per mode (default: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per prompt and mode (default: 3)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the language models (warm-up untimed)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (default: 2, this machine's cores; use 1 on a shared one)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_speed"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompts = [(f"Describe picture {i} step by step.", [scene(i)]) for i in range(args.prompts)]
    results = {}
    for name in args.sizes:
        vlm = DiffusionVLM(*build_tiny_model("qwen2_5_vl", SIZES[name], min_embedding_rows=HEAD_ROWS))
        params = sum(p.numel() for p in vlm.family.language_model(vlm.model).parameters())
        params += vlm.family.lm_head(vlm.model).weight.numel()
        print(f"{name}: {params / 1e6:.1f}M language-model parameters", flush=True)
        warmup_s = 0.0
        if args.compile:
            start = time.perf_counter()
            vlm.compile()
            for spec in DEFAULT_MODES:
                run_mode(vlm, spec, *prompts[0], args.max_new_tokens)
            warmup_s = time.perf_counter() - start
            print(f"{name}: compiled and warmed up in {warmup_s:.0f} s", flush=True)
        results[name] = {
            "params_m": params / 1e6,
            "compiled": args.compile,
            "compile_warmup_s": warmup_s,
            "pass_ms": {str(n): ms for n, ms in pass_cost_ms(vlm, TOKEN_COUNTS).items()},
            "modes": compare_modes(vlm, prompts, DEFAULT_MODES, args.max_new_tokens, args.repeats),
        }
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))  # nothing lost on a crash
    table = markdown(results)
    print(table)
    args.out.with_suffix(".md").write_text(table + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out}.md, .json, .png")


if __name__ == "__main__":
    main()
