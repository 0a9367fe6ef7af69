"""What a server is started with, and its defaults: the one place they are written. Free of FastAPI, so
`fast-dvlm serve --help` shows them without the `serve` extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import FastDVLMError
from ..modes import check_mode


@dataclass(frozen=True)
class ServeConfig:
    model_name: str
    mode: str | None = None  # decoding mode when a request names none; None: the model's default_mode
    max_tokens: int = 512  # answer cap when a request sets none
    allowed_dirs: tuple[str | Path, ...] = ()  # where local image paths may point
    max_batch_size: int = 8  # answers decoded together (continuous batching)
    queue_size: int = 16  # requests waiting behind the running batch
    timeout: float = 300.0  # seconds from entering the queue to the last token
    max_pixels: int = 4096 * 4096  # per image
    max_body_bytes: int = 64 * 2**20  # a request body, data-URL images included

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_batch_size", "queue_size", "timeout", "max_pixels", "max_body_bytes"):
            if getattr(self, name) <= 0:
                raise FastDVLMError(f"{name} must be positive, got {getattr(self, name)}")
        for folder in self.allowed_dirs:
            if not Path(folder).is_dir():
                raise FastDVLMError(f"allowed image folder {folder} is not a folder")
        if self.mode is not None:
            check_mode(self.mode)
