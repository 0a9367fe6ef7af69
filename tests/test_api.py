"""What the Python API promises a user: the model's own default mode (one rule for every entry
point), a refused over-long prompt, and streamed text free of special tokens."""

from __future__ import annotations

import pytest

from fast_dvlm import DiffusionVLM
from fast_dvlm.errors import ContextLengthError, FastDVLMError
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.modes import resolve_mode

from .conftest import TEST_SIZE

CONVERTED = {"recipe": {"alpha_diffusion": 0.5, "beta_ar": 0.5}, "base": "tiny"}  # as convert records it
AR_ONLY = {"recipe": {"alpha_diffusion": 0.0, "beta_ar": 1.0}, "base": "tiny"}  # the trainer, AR loss only


@pytest.fixture
def vlm() -> DiffusionVLM:
    """A fresh tiny model each test: the tests change its settings and weights."""
    return DiffusionVLM(*build_tiny_model("qwen2_5_vl", TEST_SIZE))


@pytest.mark.parametrize(
    "recipe, mode",
    [({}, "ar"), (AR_ONLY, "ar"), (CONVERTED, "spec-linear"), ({"released": "fast_dvlm"}, "spec-linear")],
)
def test_the_default_mode_is_the_checkpoint_s(vlm, images, recipe, mode):
    vlm.settings.recipe = recipe
    assert vlm.default_mode == mode
    out = vlm.generate("What is shown?", images[:1], max_new_tokens=6)
    assert out.mode == mode
    assert out.token_ids == vlm.generate("What is shown?", images[:1], "ar", 6).token_ids  # both lossless
    assert vlm.generate("What is shown?", images[:1], "diffusion", 6).mode == "diffusion"  # explicit wins


def test_no_mode_means_the_first_mode_given_else_the_model_s_own():
    """The one rule generate, the CLI, chat, the server (request, then server) and lmms-eval follow."""
    assert resolve_mode(converted=True) == "spec-linear" and resolve_mode(converted=False) == "ar"
    assert resolve_mode(None, converted=True) == "spec-linear"
    assert resolve_mode(None, "diffusion", converted=True) == "diffusion"  # the server's, no request's
    assert resolve_mode("ar", "diffusion", converted=True) == "ar"  # the request's wins
    for bad in ("", "fast"):  # only None means no mode: an empty one is refused, not defaulted
        with pytest.raises(FastDVLMError, match="unknown decoding mode"):
            resolve_mode(bad, converted=True)


@pytest.mark.parametrize("words, max_new_tokens", [(3, 5000), (6000, 8)])
def test_a_prompt_over_the_context_is_refused_in_one_line(vlm, words, max_new_tokens):
    prompt = " ".join(f"w{i * 7919 % 100003}" for i in range(words))
    for call in (vlm.generate, lambda *a, **k: next(vlm.stream(*a, **k))):
        with pytest.raises(ContextLengthError) as caught:
            call(prompt, max_new_tokens=max_new_tokens)
        message = str(caught.value)
        assert "\n" not in message and "context length of 4096 tokens" in message
        assert f"allows {max_new_tokens} more" in message and "shorten the prompt" in message


def test_streamed_text_has_no_special_tokens(vlm, images):
    """An answer that ends with <|im_end|>: its token chunks carry it (as `token_ids` does), the
    text pieces do not, and they join to `generate`'s text."""
    prompt, settings = "What is shown?", {"mode": "spec-linear", "max_new_tokens": 12, "block_size": 4}
    third = vlm.generate(prompt, images[:1], **settings).token_ids[2]
    im_end = vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    head = vlm.model.lm_head.weight.data
    head[[third, im_end]] = head[[im_end, third]]  # the answer now ends at its third token at the latest
    out = vlm.generate(prompt, images[:1], **settings)
    assert out.token_ids[-1] == im_end and len(out.token_ids) <= 3
    chunks = list(vlm.stream(prompt, images[:1], **settings))
    assert [t for chunk in chunks for t in chunk] == out.token_ids
    assert "<|im_end|>" in "".join(vlm.tokenizer.decode(chunk) for chunk in chunks)  # the old README way
    pieces = list(vlm.stream_text(prompt, images[:1], **settings))
    assert "".join(pieces) == out.text and not any("<|" in piece for piece in pieces)
