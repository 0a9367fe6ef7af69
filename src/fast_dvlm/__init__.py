"""fast-dvlm: block-diffusion vision-language models, converted from autoregressive ones."""

from . import quiet_dependencies  # noqa: F401  (first: before transformers is imported)
from .errors import FastDVLMError
from .vlm import DiffusionVLM, GenerationOutput, load

__version__ = "0.1.0"
__all__ = ["DiffusionVLM", "FastDVLMError", "GenerationOutput", "load"]
