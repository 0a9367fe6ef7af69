"""FP8 quantisation of the language model: native on FP8 GPUs (torchao), emulated anywhere else.

The names load their module (and torch) on first use, so `fast-dvlm --help`, which imports
`quant.cli`, stays fast."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import load_quantized, save_quantized
    from .config import SCHEMES, Scheme, is_fp8_checkpoint
    from .linear import FP8Linear
    from .quantize import native_fp8_available, quantize

_LAZY = {
    "SCHEMES": "config",
    "Scheme": "config",
    "is_fp8_checkpoint": "config",
    "FP8Linear": "linear",
    "load_quantized": "checkpoint",
    "save_quantized": "checkpoint",
    "native_fp8_available": "quantize",
    "quantize": "quantize",
}
__all__ = [
    "SCHEMES",
    "FP8Linear",
    "Scheme",
    "is_fp8_checkpoint",
    "load_quantized",
    "native_fp8_available",
    "quantize",
    "save_quantized",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f".{_LAZY[name]}", __name__)
    # Bind every name whose module is loaded by now: loading the submodule `quantize` sets this
    # package's attribute `quantize` to the module, and the function must win.
    for lazy, module in _LAZY.items():
        if f"{__name__}.{module}" in sys.modules:
            globals()[lazy] = getattr(sys.modules[f"{__name__}.{module}"], lazy)
    return globals()[name]
