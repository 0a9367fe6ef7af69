"""Why a 2-token pass costs about as much as a 4- or 8-token pass on this CPU: one linear layer of
the `medium` size (512 -> 1376) timed alone for M = 1..32 rows. Its cost grows about linearly up to
M = 3 and drops at M = 4, consistent with MKL's fp32 GEMM picking another kernel from M = 4 on: the
anomaly is in the BLAS, not in the decoding engine.

    OMP_NUM_THREADS=1 python benchmarks/gemm_small_m.py --out benchmarks/results/gemm_small_m.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROWS = (1, 2, 3, 4, 8, 16, 32)


def median_us(layer: torch.nn.Linear, rows: int, repeats: int) -> float:
    x = torch.randn(rows, layer.in_features)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 10):  # the first ten warm up and are discarded
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per row count (default: 300)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gemm_small_m.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layer = torch.nn.Linear(512, 1376)
    costs = {rows: median_us(layer, rows, args.repeats) for rows in ROWS}
    lines = [
        f"One fp32 linear layer 512 -> 1376, {args.threads} thread(s), median of {args.repeats} calls",
        "",
        "| rows (tokens in the pass) | " + " | ".join(str(r) for r in ROWS) + " |",
        "|---|" + "---|" * len(ROWS),
        "| µs | " + " | ".join(f"{costs[r]:.0f}" for r in ROWS) + " |",
        "| vs 1 row | " + " | ".join(f"{costs[r] / costs[1]:.1f}x" for r in ROWS) + " |",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
