"""Which families fast-dvlm supports, found by the checkpoint's `model_type`."""

from __future__ import annotations

from typing import Any

from ..errors import FastDVLMError
from .family import Family
from .fast_vlm import FastVlmFamily
from .qwen_text import Qwen2TextFamily
from .qwen_vl import Qwen2_5_VLFamily, Qwen2VLFamily, Qwen3VLFamily

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (Qwen2VLFamily(), Qwen2_5_VLFamily(), Qwen3VLFamily(), FastVlmFamily(), Qwen2TextFamily())
}


def get_family(name: str) -> Family:
    """The family registered under `name` (a transformers `model_type`), or one clear error."""
    if name not in FAMILIES:
        raise FastDVLMError(
            f"unsupported model family {name!r}; fast-dvlm supports: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[name]


def family_of(config: Any) -> Family:
    return get_family(getattr(config, "model_type", None) or "<missing model_type>")
