"""Train one variant in a child process, to measure its peak memory alone.

A process's peak resident set only grows, so variants trained one after another in one process
would each report the largest so far. Each variant therefore trains in a child forked from a
fork server that has imported the trainer and nothing else: every child starts from the same
few hundred MB of libraries, and its `ru_maxrss` at the end is its own peak. On a GPU the peak of
allocated GPU memory is recorded too. The median step time comes from the training log.

As with any multiprocessing start method but fork, a script that calls this must guard its own
work with `if __name__ == "__main__":` (the child imports the main module); the CLI does.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import FastDVLMError, first_line
from ..train.config import TrainConfig
from ..train.trainer import LOG_FILE


def peak_rss_mb() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_measured(base: str, data: Path, out: Path, config: TrainConfig, progress: bool = True) -> dict:
    """`convert(base, data, out, config)` in a fresh child; its memory peaks and step times.

    Resumes from `out`'s checkpoints like `convert` (the peak is then the resumed run's)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["fast_dvlm.train.trainer"])
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_train, args=(base, str(data), str(out), config, progress, send))
    child.start()
    send.close()
    try:
        message = receive.recv()
    except EOFError:  # it died without a word: killed, or out of memory
        message = {"error": "the training process ended before reporting"}
    child.join()
    if "error" in message:
        raise FastDVLMError(f"training {out.name} failed: {message['error']}")
    seconds = [json.loads(line)["seconds"] for line in (out / LOG_FILE).read_text().splitlines()]
    return message | {"median_step_s": statistics.median(seconds), "training_s": sum(seconds)}


def _train(base: str, data: str, out: str, config: TrainConfig, progress: bool, send: Connection) -> None:
    import torch

    from ..train.trainer import convert

    try:
        start = peak_rss_mb()
        convert(base, data, out, config, progress=progress)
        report: dict[str, Any] = {"peak_rss_mb": peak_rss_mb(), "start_rss_mb": start}
        if torch.cuda.is_available():
            report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        send.send(report)
    except FastDVLMError as exc:
        send.send({"error": first_line(exc)})
    except Exception as exc:  # a bug: its traceback here, one line for the parent to raise
        traceback.print_exc()
        send.send({"error": f"{type(exc).__name__}: {first_line(exc)}"})
