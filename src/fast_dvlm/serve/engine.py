"""One model, one worker thread, continuous batching: requests wait in a bounded queue, join the
running batch between decoding rounds (up to `max_batch_size` answers at once) and leave it when
done, cancelled or stopped by a stop string.

Each round runs one batched forward pass over every running answer (decoding/batch.py), so answers
decoded together cost about what one costs on a CPU whose passes are mostly fixed overhead; each
answer is still the one its request gives alone (token for token in the lossless modes). The worker
sends each committed block to the request's event loop as a text piece, and checks between rounds
whether a request was abandoned (client gone, timeout), so an abandoned request leaves the batch at
the next round. A full queue is refused at once (429) rather than left to hang.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import torch
from transformers import BatchFeature

from ..decoding import Decoder
from ..decoding.answer import Answer
from ..decoding.batch import Batch
from ..detokenize import TextStream
from ..errors import ContextLengthError, FastDVLMError
from ..prompt import Messages
from ..vlm import DiffusionVLM
from .errors import APIError

log = logging.getLogger("fast_dvlm.serve")

POLL_SECONDS = 0.25  # how often a waiting request looks for a departed client


@dataclass(frozen=True)
class Started:
    """The prompt is in the cache: the request was valid and decoding has begun."""


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (stop token or stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    nfe: int


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Started | Piece | Finished | Failed


@dataclass(frozen=True)
class Work:
    """A validated request: chat messages with their images opened, a decoder, stop strings."""

    messages: Messages
    decoder: Decoder
    stop: tuple[str, ...] = ()


class Job:
    """One request's passage through the engine: its work, its events, its cancellation flag."""

    def __init__(self, work: Work, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.work = work
        self.deadline = deadline  # on the time.monotonic() clock
        self.cancelled = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        """Called by the worker thread: hand `event` to the request's event loop."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def abandoned(self) -> bool:
        """The worker's test between blocks: the requester has gone or the deadline has passed."""
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    async def events(self, client_gone: Callable[[], Awaitable[bool]]) -> AsyncIterator[Event]:
        """The job's events up to `Finished` or `Failed`; ends early, silently, if the client leaves.

        Raises a 504 APIError once the deadline passes. However it ends, the job is cancelled, so the
        worker drops it at the next block (or skips it if it is still queued).
        """
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise APIError(504, "the request took longer than the server's timeout", "timeout")
                try:
                    event = await asyncio.wait_for(self._events.get(), min(remaining, POLL_SECONDS))
                except asyncio.TimeoutError:
                    if await client_gone():
                        return
                    continue
                yield event
                if isinstance(event, Finished | Failed) or await client_gone():
                    return
        finally:
            self.cancelled.set()


@dataclass
class Running:
    """A request whose answer is in the batch."""

    job: Job
    answer: Answer
    text: TextStream
    prompt_tokens: int


class Engine:
    def __init__(self, vlm: DiffusionVLM, queue_size: int, max_batch_size: int = 8) -> None:
        self.vlm = vlm
        self.max_batch_size = max_batch_size
        self.running = 0  # answers in the batch
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="fast-dvlm-engine", daemon=True)

    @property
    def busy(self) -> bool:
        return self.running > 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Drop every queued job and end the worker after the current round."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
        self._queue.put(None)
        self._thread.join()

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                429,
                f"the server is busy: {self._queue.maxsize} requests are already waiting; retry shortly",
                "queue_full",
                headers={"Retry-After": "1"},
            ) from None

    def _work(self) -> None:
        vlm = self.vlm
        batch = Batch(vlm.model, vlm.family, engine=vlm.engine)
        running: dict[int, Running] = {}  # by id(answer)
        with torch.inference_mode():
            while True:
                joining: list[Job] = []  # join between rounds, together; wait only when idle
                while len(batch) + len(joining) < self.max_batch_size:
                    try:
                        job = self._queue.get(block=not (running or joining))
                    except queue.Empty:
                        break
                    if job is None:
                        for left in [*(run.job for run in running.values()), *joining]:
                            left.cancelled.set()
                        return
                    if not job.abandoned():
                        joining.append(job)
                for run in self._start(joining, batch):
                    running[id(run.answer)] = run
                    self.running = len(running)
                    run.job.emit(Started())  # counted as running by now
                if not running:
                    continue
                try:
                    rounds = batch.round()
                except Exception as exc:  # a failed round fails every answer in it; the worker goes on
                    log.error("decoding failed", exc_info=exc)
                    for run in running.values():
                        run.job.emit(Failed(failure(exc)))
                    running.clear()
                    self.running = 0
                    batch = Batch(vlm.model, vlm.family, engine=vlm.engine)
                    continue
                for answer, chunks in rounds:
                    run = running[id(answer)]
                    if self._deliver(run, chunks, batch):
                        del running[id(answer)]
                self.running = len(running)

    def _start(self, jobs: list[Job], batch: Batch) -> list[Running]:
        """Prefill the jobs' prompts into the batch together (one vision-tower call, one prompt
        pass: `DiffusionVLM.start_many`); a job that cannot start is told why and left out. If the
        joint start fails, each job starts alone, so only the job at fault fails."""
        vlm, encoded = self.vlm, []
        for job in jobs:
            try:
                encoded.append((job, vlm.encode(job.work.messages, None, job.work.decoder.options)))
            except Exception as exc:
                self._fail(job, exc)
        if len(encoded) > 1:
            try:
                answers = vlm.start_many([j.work.decoder for j, _ in encoded], [e for _, e in encoded], batch)
                return [self._running(j, a, e) for (j, e), a in zip(encoded, answers, strict=True)]
            except Exception:  # noqa: BLE001 (retried one by one below, where it is reported)
                pass
        started = []
        for job, batch_feature in encoded:
            try:
                answer = vlm.start(job.work.decoder, batch_feature, into=batch)
            except Exception as exc:
                self._fail(job, exc)
                continue
            started.append(self._running(job, answer, batch_feature))
        return started

    def _running(self, job: Job, answer: Answer, encoded: BatchFeature) -> Running:
        return Running(
            job, answer, TextStream(self.vlm.tokenizer, job.work.stop), encoded["input_ids"].shape[1]
        )

    def _fail(self, job: Job, exc: Exception) -> None:
        if not isinstance(exc, APIError | ContextLengthError | FastDVLMError | ValueError):
            log.error("decoding failed", exc_info=exc)
        job.emit(Failed(failure(exc)))

    def _deliver(self, run: Running, chunks: list[list[int]], batch: Batch) -> bool:
        """Send a round's chunks of one answer as text pieces; True once the request is over (done,
        stopped by a stop string, or abandoned), its answer out of the batch."""
        job, text, answer = run.job, run.text, run.answer
        if job.abandoned():
            if not answer.done:
                batch.leave(answer)
            return True
        for chunk in chunks:
            if piece := text.push(chunk):
                job.emit(Piece(piece))
            if text.stopped:
                break
        if not (answer.done or text.stopped):
            return False
        if not answer.done:
            batch.leave(answer)  # the decoder stops here, not after the next round
        if piece := text.flush():
            job.emit(Piece(piece))
        session = answer.session
        stopped = text.stopped or session.tokens[-1] in self.vlm.stop_ids
        reason = "stop" if stopped else "length"
        job.emit(Finished(reason, run.prompt_tokens, len(session.tokens), session.nfe))
        return True


def failure(exc: Exception) -> APIError:
    """The error body a request gets for `exc`."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), "context_length_exceeded", "messages")
    if isinstance(exc, FastDVLMError | ValueError):  # what the processor or the model rejects in the input
        return APIError(400, f"the model cannot take this input: {exc}", "invalid_input")
    return APIError(500, "decoding failed; the server log has the details", "internal_error")
