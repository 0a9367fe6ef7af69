"""Train one variant in a child process, to measure its peak memory alone.

A process's peak resident set only grows, so variants trained one after another in one process
would each report the largest so far. Each variant therefore trains in a child forked from a
fork server that has imported the trainer and nothing else: every child starts from the same
few hundred MB of libraries, and its `ru_maxrss` at the end is its own peak. On a GPU the peak of
allocated GPU memory is recorded too. The median step time comes from the training log. A child
whose run has ended (killed, rather than interrupted from a terminal, which stops the whole process
group) stops too, instead of training on unseen beside the rerun; the variant's checkpoints let that
rerun resume it.

As with any multiprocessing start method but fork, a script that calls this must guard its own
work with `if __name__ == "__main__":` (the child imports the main module); the CLI does.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
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
    receive, send = multiprocessing.Pipe(duplex=False)
    child, keep_alive = spawn(_train, base, str(data), str(out), config, progress, send)
    send.close()
    try:
        message = receive.recv()
    except EOFError:  # it died without a word: killed, or out of memory
        message = {"error": "the training process ended before reporting"}
    child.join()
    keep_alive.close()
    if "error" in message:
        raise FastDVLMError(f"training {out.name} failed: {message['error']}")
    seconds = [json.loads(line)["seconds"] for line in (out / LOG_FILE).read_text().splitlines()]
    return message | {"median_step_s": statistics.median(seconds), "training_s": sum(seconds)}


def spawn(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, Connection]:
    """Start `target(*args, lifeline)` in a fresh child of the trainer's fork server; the child and
    the other end of its lifeline, which this process alone holds (close it once the child has
    been joined). A child that calls `exit_with(lifeline)` ends when this process is gone."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["fast_dvlm.train.trainer"])
    lifeline, keep_alive = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, lifeline))
    child.start()
    lifeline.close()
    return child, keep_alive


def exit_with(lifeline: Connection) -> None:
    """Exit this process (code 1) as soon as `lifeline` reads end-of-file: its parent has ended."""

    def wait() -> None:
        with contextlib.suppress(EOFError):
            lifeline.recv()
        os._exit(1)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()


def _train(
    base: str,
    data: str,
    out: str,
    config: TrainConfig,
    progress: bool,
    send: Connection,
    lifeline: Connection,
) -> None:
    import torch

    from ..train.trainer import convert

    exit_with(lifeline)
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
