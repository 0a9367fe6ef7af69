"""Time to first token of FastViTHD vs the Qwen2.5-VL-3B ViT feeding the same Qwen2-0.5B-size LM.

Real-size random-weight models, fp32 on CPU; the same run as `fast-dvlm bench --ttft`. Slow: the
real ViT at 1024² takes over a minute a run on 2 cores, so it is timed `--slow-repeats` times.

    OMP_NUM_THREADS=2 python benchmarks/ttft.py --out benchmarks/results/ttft
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fast_dvlm.bench.ttft import RESOLUTIONS, parse_resolutions, ttft_report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)), help="square image sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default: 3)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs for the ViT at 1024² (default: 1)")
    parser.add_argument(
        "--tokens-per-pass",
        type=float,
        default=None,
        help="spec-linear's measured tokens/NFE (default: benchmarks/results/bench_demo.json, else 1.0)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ttft"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ttft_report(
        parse_resolutions(args.resolutions),
        args.repeats,
        args.tokens_per_pass,
        json_path=args.out.with_suffix(".json"),
        markdown_path=args.out.with_suffix(".md"),
        plot_path=args.out.with_suffix(".png"),
        slow_repeats=args.slow_repeats,
    )
    print(f"wrote {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
