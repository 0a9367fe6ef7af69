"""One log line per request, written when its response has ended (for a stream: its last chunk).

`method path status latency` plus, for chat completions, what the route left in the request state:
prompt and completion tokens, NFE, and how the answer ended (stop, length, timeout, client gone).
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fast_dvlm.serve")


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

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            usage = state.get("usage") or {}
            extra = " ".join(
                f"{k}={usage[k]}" for k in ("prompt_tokens", "completion_tokens", "nfe") if k in usage
            )
            outcome = state.get("outcome")
            log.info(
                "%s %s %d %.3fs%s%s",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - start,
                f" {extra}" if extra else "",
                f" {outcome}" if outcome else "",
            )
