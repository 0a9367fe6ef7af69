"""Decoding algorithms, chosen by name from an explicit registry."""

from __future__ import annotations

from ..errors import FastDVLMError
from .ar import ARDecoder
from .base import DecodeOptions, Decoder
from .session import Session

DECODERS: dict[str, type[Decoder]] = {cls.name: cls for cls in (ARDecoder,)}


def make_decoder(mode: str, options: DecodeOptions) -> Decoder:
    if mode not in DECODERS:
        raise FastDVLMError(f"unknown decoding mode {mode!r}; choose one of: {', '.join(DECODERS)}")
    return DECODERS[mode](options)


__all__ = ["DECODERS", "DecodeOptions", "Decoder", "Session", "make_decoder"]
