"""FP8 quantisation of the language model: native on FP8 GPUs (torchao), emulated anywhere else."""

from .checkpoint import load_quantized, save_quantized
from .config import SCHEMES, Scheme, is_fp8_checkpoint
from .linear import FP8Linear
from .quantize import native_fp8_available, quantize

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
