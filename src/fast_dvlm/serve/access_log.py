"""One log line per request, written as its response ends: just before the response's last message goes
to the server, so a client that has read its whole response finds the line written (never a line
landing later, among the next request's); a response that never ends (the app raised, the client
left) is logged when the app returns.

`method path status latency` plus, for chat completions, what the route left in the request state:
prompt and completion tokens, NFE, and how the answer ended (stop, length, timeout, client gone).
An error response adds why: its OpenAI error body's code and message, read off the body as it is sent,
so every refusal (the body limit's, the router's, validation's, the engine's) says why in the log.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fast_dvlm.serve")

MAX_ERROR_BODY = 64 * 1024  # bytes of an error body kept for the log line (error bodies are small)


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before responding
        state = scope.setdefault("state", {})
        error_body = bytearray()
        logged = False

        def write_line() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            usage = state.get("usage") or {}
            extra = " ".join(
                f"{k}={usage[k]}" for k in ("prompt_tokens", "completion_tokens", "nfe") if k in usage
            )
            outcome = state.get("outcome")
            reason = error_reason(bytes(error_body))
            log.info(
                "%s %s %d %.3fs%s%s%s",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - start,
                f" {extra}" if extra else "",
                f" {outcome}" if outcome else "",
                f" {reason}" if reason else "",
            )

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                if status >= 400:
                    error_body.extend(message.get("body", b"")[: MAX_ERROR_BODY - len(error_body)])
                if not message.get("more_body", False):
                    write_line()  # before the client can have the whole response, not after
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            write_line()  # no last chunk went out: the app raised or the client left


def error_reason(body: bytes) -> str:
    """`code: message` of an OpenAI error body; empty for any other body."""
    try:
        error = json.loads(body)["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, TypeError, KeyError):
        return ""
