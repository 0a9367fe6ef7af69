"""Tiny random models of every family, built once per test session, fully offline.

`FAST_DVLM_DEVICE` (default `cpu`) is the one device switch: the shared models live there, so the
decoding, cache and conversion tests run on a GPU with `FAST_DVLM_DEVICE=cuda` (benchmarks/gpu/check.sh).
"""

from __future__ import annotations

import os
import tempfile

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the pass-cost model (decoding/cost.py) of the test models goes to a folder of this run, not ~/.cache
os.environ.setdefault("FAST_DVLM_CACHE_DIR", tempfile.mkdtemp(prefix="fast_dvlm_cache_"))

from fast_dvlm import DiffusionVLM  # noqa: E402
from fast_dvlm.models.family import TinySize  # noqa: E402
from fast_dvlm.models.registry import FAMILIES  # noqa: E402
from fast_dvlm.models.tiny import build_tiny_model  # noqa: E402

FAMILY_NAMES = sorted(name for name, f in FAMILIES.items() if f.image_token)  # the VLM families
# A large init scale makes random models' outputs varied and sensitive to every input detail
# (image pixels, positions), so equivalence tests can fail when something is off.
TEST_SIZE = TinySize(init_std=0.3)
DEVICE = os.environ.get("FAST_DVLM_DEVICE", "cpu")


def on_device(vlm: DiffusionVLM) -> DiffusionVLM:
    """`vlm` with its model moved to the tests' device (float32 everywhere: equality tests stay exact)."""
    vlm.model.to(DEVICE)
    return vlm


@pytest.fixture(scope="session")
def tiny_vlms() -> dict[str, DiffusionVLM]:
    return {name: on_device(DiffusionVLM(*build_tiny_model(name, TEST_SIZE))) for name in FAMILY_NAMES}


@pytest.fixture(params=FAMILY_NAMES)
def family_name(request) -> str:
    return request.param


def drawn_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A small deterministic picture: coloured shapes on a plain background."""
    image = Image.new("RGB", size, ((seed * 70) % 256, 200, (seed * 30) % 256))
    draw = ImageDraw.Draw(image)
    for k in range(3):
        x, y = (seed * 17 + k * 23) % size[0], (seed * 11 + k * 31) % size[1]
        draw.ellipse([x, y, x + 20, y + 16], fill=((k * 90) % 256, (seed * 50) % 256, 40))
    return image


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    return [drawn_image(1), drawn_image(2, (64, 112))]
