"""The HTTP routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from ..decoding import make_decoder
from ..modes import resolve_mode
from ..vlm import DiffusionVLM
from .access_log import RequestLog
from .body_limit import BodyLimit
from .config import ServeConfig
from .engine import Engine, Event, Failed, Finished, Job, Piece, Work
from .errors import APIError, install_error_handlers
from .images import ImagePolicy
from .schema import ChatRequest, Reply, usage

CLIENT_GONE = 499  # nginx's "client closed request": logged, never received


def create_app(vlm: DiffusionVLM, config: ServeConfig) -> FastAPI:
    """An app serving `vlm`; its engine thread starts and stops with the app's lifespan."""
    engine = Engine(vlm, config.queue_size, config.max_batch_size)
    images = ImagePolicy(config.allowed_dirs, config.max_pixels)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="fast-dvlm", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestLog)  # outermost: refused bodies are logged too
    install_error_handlers(app)

    def prepare(body: ChatRequest) -> Work:
        """Open the images and check the decoding settings: every 400 that needs no model pass."""
        messages = [m.to_chat(images.open, f"messages.{i}") for i, m in enumerate(body.messages)]
        cap = body.answer_cap(config.max_tokens)
        options = vlm.decode_options(cap, body.block_size, body.sub_block_size, body.threshold)
        decoder = make_decoder(
            resolve_mode(body.mode, config.mode, converted=vlm.settings.converted), options
        )
        return Work(messages, decoder, body.stop_strings())

    @app.get("/health")
    async def health() -> dict:
        if not engine.alive:
            raise APIError(503, "the decoding engine has stopped", "engine_stopped")
        return {
            "status": "ok",
            "model": config.model_name,
            "busy": engine.busy,
            "running": engine.running,
            "waiting": engine.waiting,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": config.model_name, "object": "model", "created": started, "owned_by": "fast-dvlm"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        work = await run_in_threadpool(prepare, body)
        job = Job(work, asyncio.get_running_loop(), time.monotonic() + config.timeout)
        engine.submit(job)
        events = job.events(request.is_disconnected)
        first = await anext(events, None)  # after the prefill: a bad prompt is still a plain 4xx
        if first is None:
            request.state.outcome = "client gone"
            return Response(status_code=CLIENT_GONE)
        if isinstance(first, Failed):
            await events.aclose()
            raise first.error
        reply = Reply(config.model_name)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = server_sent_events(reply, events, include_usage, request.state)
            return StreamingResponse(stream, media_type="text/event-stream")
        completion = await collect(reply, events, request.state)
        return JSONResponse(completion) if completion else Response(status_code=CLIENT_GONE)

    return app


def record(state: State, event: Finished) -> dict[str, int]:
    """Leave the answer's counts for the request log; return its usage object."""
    state.usage = usage(event.prompt_tokens, event.completion_tokens, event.nfe)
    state.outcome = event.finish_reason
    return state.usage


async def collect(reply: Reply, events: AsyncIterator[Event], state: State) -> dict | None:
    """The whole answer as one completion body; None if the client left first."""
    pieces = []
    async with aclosing(events):
        async for event in events:
            if isinstance(event, Piece):
                pieces.append(event.text)
            elif isinstance(event, Finished):
                return reply.completion("".join(pieces), event.finish_reason, record(state, event))
            elif isinstance(event, Failed):
                raise event.error
    state.outcome = "client gone"
    return None


async def server_sent_events(
    reply: Reply, events: AsyncIterator[Event], include_usage: bool, state: State
) -> AsyncIterator[str]:
    """One `chat.completion.chunk` per committed block, then the finish reason (and usage) and [DONE].

    Headers are sent by now, so a failure mid-stream becomes an `{"error": ...}` event, which the
    OpenAI client raises as an error.
    """
    state.outcome = "client gone"  # unless the answer finishes
    async with aclosing(events):
        yield sse(reply.chunk({"role": "assistant", "content": ""}))
        try:
            async for event in events:
                if isinstance(event, Piece):
                    yield sse(reply.chunk({"content": event.text}))
                elif isinstance(event, Finished):
                    counts = record(state, event)
                    yield sse(reply.chunk({}, event.finish_reason))
                    if include_usage:
                        yield sse(reply.usage_chunk(counts))
                    yield "data: [DONE]\n\n"
                elif isinstance(event, Failed):
                    raise event.error
        except APIError as exc:
            state.outcome = exc.code
            yield sse(exc.body())


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
