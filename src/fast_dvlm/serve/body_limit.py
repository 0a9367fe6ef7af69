"""Refuse request bodies over a size limit before anything parses them.

Without it the server reads any body whole (a data-URL image of a gigabyte included) before the
image checks can say no. A declared `Content-Length` over the limit is refused at once; a chunked
body is counted as it arrives and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(scope, receive, send)
            return
        buffered: list[Message] = []
        size = 0
        while True:  # the routes read the whole body anyway; here it is counted on the way in
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self.refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()  # then: disconnect notices

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = f"{self.max_bytes / 2**20:.1f} MiB"
        error = APIError(
            413, f"the request body is larger than the server's limit of {limit}", "body_too_large"
        )
        await error.response()(scope, receive, send)
