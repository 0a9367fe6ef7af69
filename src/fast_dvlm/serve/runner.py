"""Running the app with uvicorn: in the foreground for `fast-dvlm serve`, or on a background thread
bound to a free loopback port, for tests, benchmarks and notebooks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def run(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted. uvicorn's access log is off: `RequestLog` writes one line per request."""
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@contextmanager
def serving_in_background(app: FastAPI, startup_timeout: float = 60.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 at a port the OS picks; yield its base URL; shut down on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts: no other process can take the port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
