"""One model, one worker thread: requests wait in a bounded queue and are decoded one at a time.

Torch on a CPU gains nothing from decoding two requests at once (they would share the same cores),
and one worker keeps every answer exactly what the request gives when run alone. The worker sends
each committed block to the request's event loop as a text piece, and checks between blocks whether
the request was abandoned (client gone, timeout), so an abandoned request frees the engine at the
next block. A full queue is refused at once (429) rather than left to hang.
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

from ..decoding import Decoder
from ..detokenize import TextStream
from ..errors import ContextLengthError, FastDVLMError
from ..prompt import Messages, encode_prompt
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


class Engine:
    def __init__(self, vlm: DiffusionVLM, queue_size: int) -> None:
        self.vlm = vlm
        self.busy = False
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="fast-dvlm-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Drop every queued job and end the worker after the current block."""
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
        while (job := self._queue.get()) is not None:
            if job.abandoned():
                continue
            self.busy = True
            try:
                with torch.inference_mode():
                    self._decode(job)
            except APIError as exc:
                job.emit(Failed(exc))
            except ContextLengthError as exc:
                job.emit(Failed(APIError(400, str(exc), "context_length_exceeded", "messages")))
            except (FastDVLMError, ValueError) as exc:  # what the processor or the model rejects in the input
                job.emit(Failed(APIError(400, f"the model cannot take this input: {exc}", "invalid_input")))
            except Exception as exc:  # the worker must survive anything one request does
                log.error("decoding failed", exc_info=exc)
                job.emit(
                    Failed(APIError(500, "decoding failed; the server log has the details", "internal_error"))
                )
            finally:
                self.busy = False

    def _decode(self, job: Job) -> None:
        """Prefill, then decode block by block until done, a stop string, or the job is cancelled."""
        vlm, work = self.vlm, job.work
        batch = encode_prompt(vlm.processor, work.messages)
        prompt_tokens = batch["input_ids"].shape[1]
        session, first_logits = vlm.prefill(batch, work.decoder.name, work.decoder.options)
        job.emit(Started())
        text = TextStream(vlm.tokenizer, work.stop)
        blocks = work.decoder.run(session, first_logits)
        for block in blocks:
            if job.abandoned():
                break
            if piece := text.push(block):
                job.emit(Piece(piece))
            if text.stopped:
                break
        blocks.close()  # the decoder stops here, not after the next block
        if job.abandoned():
            return
        if piece := text.flush():
            job.emit(Piece(piece))
        stopped = text.stopped or session.tokens[-1] in vlm.stop_ids
        job.emit(Finished("stop" if stopped else "length", prompt_tokens, len(session.tokens), session.nfe))
