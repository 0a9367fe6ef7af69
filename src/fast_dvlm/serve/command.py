"""`fast-dvlm serve`: its arguments and what it runs. FastAPI and uvicorn are imported only when the
command runs, so the rest of the CLI works without the `serve` extra."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import subprocess

from ..errors import FastDVLMError
from ..modes import DEFAULT_MODE, MODES
from .config import ServeConfig

ENGINES = ("fast-dvlm", "sglang")


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with block-wise streaming",
        description="Serve one model at /v1/chat/completions (OpenAI chat format, images as data: URLs or "
        "allowed local paths; stream=true sends each committed block), /v1/models and /health. One "
        "engine thread decodes up to --max-batch-size requests together, one batched pass per round, "
        "requests joining and leaving between rounds; the others wait in a bounded queue.",
    )
    serve.add_argument("--model", required=True, help="checkpoint directory, demo, or tiny:FAMILY")
    serve.add_argument(
        "--engine", choices=ENGINES, default="fast-dvlm", help="fast-dvlm (CPU/GPU) or sglang (GPU)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder whose images requests may name by local path (repeat; default: none)",
    )
    d = ServeConfig  # its field defaults are the command's
    side, body_mb = math.isqrt(d.max_pixels), d.max_body_bytes / 2**20
    for flag, kind, default, text in (
        (
            "--max-batch-size",
            int,
            d.max_batch_size,
            f"requests decoded together (default: {d.max_batch_size})",
        ),
        ("--queue-size", int, d.queue_size, f"requests that may wait (default: {d.queue_size})"),
        ("--timeout", float, d.timeout, f"seconds per request (default: {d.timeout:g})"),
        ("--max-pixels", int, d.max_pixels, f"largest image, in pixels (default: {side}x{side})"),
        ("--max-body-mb", float, body_mb, f"largest request body, images included (default: {body_mb:g})"),
    ):
        serve.add_argument(flag, type=kind, default=default, help=text)
    serve.add_argument(
        "--mode",
        default=None,
        metavar="MODE",
        help=f"decoding mode of requests that name none: {', '.join(MODES)} (default: {DEFAULT_MODE}; "
        "sglang: diffusion)",
    )
    serve.add_argument(
        "--max-tokens",
        type=int,
        default=d.max_tokens,
        help=f"answer cap of requests that set none (default: {d.max_tokens})",
    )
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    if args.engine == "sglang":
        serve_with_sglang(args)
        return
    try:
        from .app import create_app
        from .runner import run
    except ImportError as exc:
        raise FastDVLMError(
            f"serving needs the serve extra ({exc.name} is missing): pip install 'fast-dvlm[serve]'"
        ) from None
    from ..vlm import load

    config = ServeConfig(
        model_name=args.model,
        mode=args.mode,
        max_tokens=args.max_tokens,
        allowed_dirs=tuple(args.allow_path),
        max_batch_size=args.max_batch_size,
        queue_size=args.queue_size,
        timeout=args.timeout,
        max_pixels=args.max_pixels,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(create_app(load(args.model), config), args.host, args.port)


def serve_with_sglang(args: argparse.Namespace) -> None:
    """Run SGLang's server on the converted model, in the foreground."""
    import torch

    from ..integrations.sglang import sglang_command

    if importlib.util.find_spec("sglang") is None or not torch.cuda.is_available():
        raise FastDVLMError(
            "SGLang serving needs the sglang extra and a CUDA GPU (pip install 'fast-dvlm[sglang]'); "
            "without them use --engine fast-dvlm"
        )
    mode = "diffusion" if args.mode is None else args.mode  # SGLang's one algorithm, whatever the model
    command = sglang_command(args.model, mode=mode, host=args.host, port=args.port)
    raise SystemExit(subprocess.call(command))
