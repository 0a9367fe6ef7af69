"""`DiffusionVLM.compile()`: compiled decoding gives exactly the token ids of eager decoding."""

from __future__ import annotations

import copy
import os
import shutil

import pytest

COMPILER = os.environ.get("CXX", "g++")


@pytest.mark.skipif(
    shutil.which(COMPILER) is None,
    reason=f"torch.compile's CPU backend (inductor) needs a C++ compiler; {COMPILER!r} is not on PATH",
)
def test_compiled_decoding_equals_eager(tiny_vlms, images):
    """One tiny model and one mode keep it to ~30-45 s of compiling on 2 CPU cores: the prefill,
    the first pass over the prefill's cache and the later 1-token passes are three graphs."""
    eager = tiny_vlms["qwen2_5_vl"]
    compiled = copy.deepcopy(eager).compile()  # a copy: the session-wide models stay eager
    reference = eager.generate("Which one?", images[:1], "ar", 12).token_ids
    assert compiled.generate("Which one?", images[:1], "ar", 12).token_ids == reference
