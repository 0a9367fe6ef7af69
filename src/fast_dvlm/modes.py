"""The decoding modes by name, in a module free of torch: the command line lists and checks them
without importing a model."""

from __future__ import annotations

from .errors import FastDVLMError

MODES = ("ar", "diffusion", "spec-linear", "spec-quadratic")  # each one a decoder in decoding.DECODERS
# Not a decoding mode: transformers' own `generate` (`DiffusionVLM.hf_generate`), the reference speed.
HF_GENERATE = "hf-generate"
# What `mode=None` means everywhere (DiffusionVLM.default_mode decides), in the words help texts use.
DEFAULT_MODE = "the model's own: spec-linear for a converted model, ar for one never converted"


def check_mode(mode: str) -> str:
    """`mode` itself if it names a decoding algorithm; otherwise one error line listing those that do."""
    if mode not in MODES:
        raise FastDVLMError(f"unknown decoding mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode
