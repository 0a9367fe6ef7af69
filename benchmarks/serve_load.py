"""Load test of `fast-dvlm serve`: a server started here, many concurrent requests through the
official openai client, some streams abandoned mid-answer; latency percentiles and throughput.

Checks as it measures: no 5xx (and no 429 while the queue holds every client), and every answer equal
to the same request sent alone. One engine decodes one request at a time, so latency is mostly queueing:
with C clients and a mean service time s, p50 is about C x s.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --model tiny:qwen2_5_vl --requests 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import sys

from fast_dvlm import load
from fast_dvlm.serve.app import ServeConfig, create_app
from fast_dvlm.serve.load import answered_differently, mixed_requests, run_load
from fast_dvlm.serve.runner import serving_in_background


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen2_5_vl")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24, help="answer cap (abandoned streams: 20x)")
    parser.add_argument("--abandon-every", type=int, default=5, help="every n-th request is abandoned")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    config = ServeConfig(args.model, mode="ar", queue_size=args.concurrency, timeout=600)
    requests = mixed_requests(args.requests, args.abandon_every, args.max_tokens)
    with serving_in_background(create_app(load(args.model), config)) as url:
        run = run_load(url, requests, args.concurrency)
        wrong = answered_differently(url, run)
    figures = run.summary() | {
        "model": args.model,
        "concurrency": args.concurrency,
        "not_200": sum(r.status != 200 for r in run.results),
        "answers_differing_from_alone": len(wrong),
    }
    print(
        f"{figures['requests']} requests ({figures['abandoned']} abandoned mid-stream), "
        f"{args.concurrency} concurrent, {args.model}: p50 {figures['p50_s'] * 1000:.0f} ms, "
        f"p95 {figures['p95_s'] * 1000:.0f} ms, {figures['requests_per_s']:.1f} answers/s, "
        f"{figures['tokens_per_s']:.0f} tokens/s; {figures['errors_5xx']} 5xx, {figures['not_200']} not 200, "
        f"{len(wrong)} answers differing from the request sent alone ({figures['seconds']:.1f} s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 1 if figures["not_200"] or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
