"""Load test of `fast-dvlm serve`: a server started here (in this process, or with
`--server-process` as a `fast-dvlm serve` process of its own, as deployed), many concurrent requests
through the official openai client, some streams abandoned mid-answer; latency percentiles and
throughput.

Checks as it measures: no 5xx (and no 429 while the queue holds every client), and every answer equal
to the same request sent alone (`answered_differently` replays each distinct request alone, so lost
or mixed-up answers show). The server decodes up to its batch size of requests together and queues
the rest, so past that latency is mostly queueing. The test suite runs the same request mix
(`mixed_requests`) at a smaller size.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --model tiny:qwen2_5_vl --requests 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import openai
from PIL import Image, ImageDraw

from fast_dvlm import load
from fast_dvlm.serve.app import create_app
from fast_dvlm.serve.config import ServeConfig
from fast_dvlm.serve.runner import serving_in_background


@dataclass(frozen=True)
class LoadRequest:
    prompt: str
    image_seed: int | None  # a drawn image before the prompt, or none
    mode: str
    max_tokens: int
    stream: bool = False
    abandon_after: int | None = None  # close the stream after this many text chunks

    def messages(self) -> list[dict]:
        content: list[dict] = [{"type": "text", "text": self.prompt}]
        if self.image_seed is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": drawn_png(self.image_seed)}})
        return [{"role": "user", "content": content}]

    def alone(self) -> LoadRequest:
        """The same question, asked plainly: not streamed, not abandoned."""
        return replace(self, stream=False, abandon_after=None)


@dataclass(frozen=True)
class LoadResult:
    request: LoadRequest
    status: int  # HTTP status (200 for a stream abandoned on purpose); 0 for an error event mid-stream
    text: str | None  # the whole answer; None if abandoned or failed
    completion_tokens: int
    seconds: float


@dataclass(frozen=True)
class LoadRun:
    results: list[LoadResult]
    seconds: float  # wall clock for the whole run

    def summary(self) -> dict[str, float]:
        """Latency percentiles over the answered requests, and throughput over the whole run."""
        answered = sorted(r.seconds for r in self.results if r.text is not None)
        tokens = sum(r.completion_tokens for r in self.results if r.text is not None)
        cuts = (
            statistics.quantiles(answered, n=20, method="inclusive") if len(answered) > 1 else answered * 19
        )
        return {
            "requests": len(self.results),
            "answered": len(answered),
            "abandoned": sum(r.request.abandon_after is not None for r in self.results),
            "errors_5xx": sum(r.status >= 500 or r.status == 0 for r in self.results),
            "p50_s": statistics.median(answered),
            "p95_s": cuts[18],
            "requests_per_s": len(answered) / self.seconds,
            "tokens_per_s": tokens / self.seconds,
            "seconds": self.seconds,
        }


def drawn_png(seed: int, size: tuple[int, int] = (64, 48)) -> str:
    """A small deterministic picture as a PNG data URL."""
    image = Image.new("RGB", size, ((seed * 70) % 256, 180, (seed * 30) % 256))
    draw = ImageDraw.Draw(image)
    for k in range(3):
        x, y = (seed * 17 + k * 23) % size[0], (seed * 11 + k * 31) % size[1]
        draw.ellipse([x, y, x + 14, y + 12], fill=((k * 90) % 256, (seed * 50) % 256, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


PROMPTS = ("What is in the picture?", "Count the shapes.", "Describe the colours.", "Write a short story.")
MODES = ("ar", "spec-linear", "diffusion")


def mixed_requests(count: int, abandon_every: int = 5, max_tokens: int = 24) -> list[LoadRequest]:
    """`count` requests cycling through prompts, images and modes; every other one streamed, and every
    `abandon_every`-th one a long stream the client closes after its first chunk."""
    requests = []
    for i in range(count):
        abandon = i % abandon_every == abandon_every - 1
        requests.append(
            LoadRequest(
                prompt=PROMPTS[i % len(PROMPTS)],
                image_seed=None if i % 3 == 0 else i % 7,
                mode=MODES[i % len(MODES)],
                max_tokens=20 * max_tokens if abandon else max_tokens,
                stream=abandon or i % 2 == 0,
                abandon_after=1 if abandon else None,
            )
        )
    return requests


def send(client: openai.OpenAI, request: LoadRequest) -> LoadResult:
    start = time.perf_counter()
    options = {
        "model": "served",
        "messages": request.messages(),
        "max_tokens": request.max_tokens,
        "extra_body": {"mode": request.mode},
    }
    try:
        if not request.stream:
            reply = client.chat.completions.create(**options)
            text, tokens = reply.choices[0].message.content, reply.usage.completion_tokens
        else:
            text, tokens = read_stream(client, request, options)
    except openai.APIStatusError as exc:
        return LoadResult(request, exc.status_code, None, 0, time.perf_counter() - start)
    except openai.APIError:  # an error event after the stream began
        return LoadResult(request, 0, None, 0, time.perf_counter() - start)
    return LoadResult(request, 200, text, tokens, time.perf_counter() - start)


def read_stream(client: openai.OpenAI, request: LoadRequest, options: dict) -> tuple[str | None, int]:
    pieces, tokens = [], 0
    stream = client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True})
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == request.abandon_after:
                    return None, 0  # leaving the block closes the connection mid-answer
    return "".join(pieces), tokens


def client_for(base_url: str, timeout: float = 120.0) -> openai.OpenAI:
    """No retries: the load test must see every 429 and 5xx."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def run_load(base_url: str, requests: Sequence[LoadRequest], concurrency: int) -> LoadRun:
    client = client_for(base_url)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda r: send(client, r), requests))
    return LoadRun(results, time.perf_counter() - start)


def answered_differently(base_url: str, run: LoadRun) -> list[LoadResult]:
    """The answered results whose text differs from the same request sent alone."""
    client = client_for(base_url)
    alone: dict[LoadRequest, str | None] = {}
    for result in run.results:
        key = result.request.alone()
        if result.text is not None and key not in alone:
            alone[key] = send(client, key).text
    return [r for r in run.results if r.text is not None and r.text != alone[r.request.alone()]]


@contextmanager
def serving_elsewhere(config: ServeConfig, startup_timeout: float = 120.0) -> Iterator[str]:
    """`fast-dvlm serve` with `config`'s settings in a process of its own (same threads setting);
    yields its base URL once /health answers; stopped with Ctrl-C's signal on exit."""
    with socket.socket() as probe:  # a free port (released just before the server takes it)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"--model": config.model_name, "--port": port, "--mode": config.mode,
                "--queue-size": config.queue_size, "--timeout": config.timeout}  # fmt: skip
    command = [sys.executable, "-m", "fast_dvlm.cli", "serve"]
    command += [str(x) for pair in settings.items() for x in pair]
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {' '.join(command)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen2_5_vl")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24, help="answer cap (abandoned streams: 20x)")
    parser.add_argument("--abandon-every", type=int, default=5, help="every n-th request is abandoned")
    parser.add_argument(
        "--server-process",
        action="store_true",
        help="run the server as its own `fast-dvlm serve` process, as deployed (default: in this process, "
        "where the clients share its interpreter lock)",
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    config = ServeConfig(args.model, mode="ar", queue_size=args.concurrency, timeout=600)
    requests = mixed_requests(args.requests, args.abandon_every, args.max_tokens)
    server = (
        serving_elsewhere(config)
        if args.server_process
        else serving_in_background(create_app(load(args.model), config))
    )
    with server as url:
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
