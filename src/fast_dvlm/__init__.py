"""fast-dvlm: block-diffusion vision-language models, converted from autoregressive ones.

The public names load their module (and torch, transformers) on first use, so `fast-dvlm --help`
and other light imports of the package stay fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import quiet_dependencies  # noqa: F401  (first: before transformers is imported)
from .errors import FastDVLMError

if TYPE_CHECKING:
    from .vlm import DiffusionVLM, GenerationOutput, load

__version__ = "0.1.0"
__all__ = ["DiffusionVLM", "FastDVLMError", "GenerationOutput", "load"]
_LAZY = {"DiffusionVLM": "vlm", "GenerationOutput": "vlm", "load": "vlm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
