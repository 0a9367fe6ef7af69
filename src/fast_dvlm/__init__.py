"""fast-dvlm: block-diffusion vision-language models, converted from autoregressive ones."""

from .errors import FastDVLMError
from .vlm import DiffusionVLM, GenerationOutput, load

__version__ = "0.1.0"
__all__ = ["DiffusionVLM", "FastDVLMError", "GenerationOutput", "load"]
