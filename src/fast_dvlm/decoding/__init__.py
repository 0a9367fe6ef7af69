"""Decoding algorithms, chosen by name from an explicit registry."""

from __future__ import annotations

from ..modes import check_mode
from .ar import ARDecoder
from .base import DecodeOptions, Decoder, StepTrace
from .diffusion import BlockDiffusionDecoder
from .session import Session
from .spec_linear import SpecLinearDecoder
from .spec_quadratic import SpecQuadraticDecoder

DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls for cls in (ARDecoder, BlockDiffusionDecoder, SpecLinearDecoder, SpecQuadraticDecoder)
}


def make_decoder(mode: str, options: DecodeOptions) -> Decoder:
    return DECODERS[check_mode(mode)](options)


__all__ = ["DECODERS", "DecodeOptions", "Decoder", "Session", "StepTrace", "make_decoder"]
