"""The decoding modes by name, in a module free of torch: the command line lists and checks them
without importing a model."""

from __future__ import annotations

from .errors import FastDVLMError

MODES = ("ar", "diffusion", "spec-linear", "spec-quadratic")  # each one a decoder in decoding.DECODERS
# Not a decoding mode: transformers' own `generate` (`DiffusionVLM.hf_generate`), the reference speed.
HF_GENERATE = "hf-generate"
# What no mode means everywhere (`resolve_mode` below), in the words help texts use.
DEFAULT_MODE = "the model's own: spec-linear for a converted model, ar for one never converted"


def check_mode(mode: str) -> str:
    """`mode` itself if it names a decoding algorithm; otherwise one error line listing those that do."""
    if mode not in MODES:
        raise FastDVLMError(f"unknown decoding mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def resolve_mode(*given: str | None, converted: bool) -> str:
    """The decoding mode to use: the first of `given` that is not None (most specific first, e.g. a
    request's own, then the server's), checked. With none given, the model's own default, the
    lossless mode that is fastest on it: `spec-linear` for a converted checkpoint, `ar` for a model
    never converted (its drafts would be rejected: the same answers at about twice the passes).

    The one reading of "no mode" for `generate`, the CLI, chat, the server and lmms-eval: only None
    means no mode (an empty string is an unknown mode, not the default)."""
    for mode in given:
        if mode is not None:
            return check_mode(mode)
    return "spec-linear" if converted else "ar"
