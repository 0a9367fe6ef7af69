"""Our KV-cached `ar` loop must reproduce transformers' greedy `generate` token for token."""

from __future__ import annotations

import pytest
import torch

from fast_dvlm import DiffusionVLM, load
from fast_dvlm.decoding import StepTrace
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.prompt import encode_prompt

from .conftest import TEST_SIZE

PROMPTS = [("What colour is the circle?", 24), ("Count the shapes, then answer.", 7)]


def hf_greedy(vlm, prompt, images, max_new_tokens):
    batch = encode_prompt(vlm.processor, prompt, images).to(vlm.model.device)
    with torch.no_grad():
        out = vlm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, batch["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("n_images", [0, 1, 2])
@pytest.mark.parametrize("prompt,max_new_tokens", PROMPTS)
def test_ar_equals_transformers_generate(tiny_vlms, family_name, images, n_images, prompt, max_new_tokens):
    vlm = tiny_vlms[family_name]
    used = images[:n_images]
    out = vlm.generate(prompt, images=used, mode="ar", max_new_tokens=max_new_tokens)
    assert out.token_ids == hf_greedy(vlm, prompt, used, max_new_tokens)
    assert out.nfe == len(out.token_ids)  # one pass per token (the prefill yields the first)
    assert out.trace == [StepTrace(tokens=1, passes=1)] * (len(out.token_ids) - 1)


def test_images_change_the_answer(tiny_vlms, family_name, images):
    """Guards the equivalence test above: these random models really look at their images."""
    vlm = tiny_vlms[family_name]
    answers = {tuple(vlm.generate("Describe it.", images=[im], max_new_tokens=8).token_ids) for im in images}
    assert len(answers) == 2


def test_stops_at_first_stop_token_like_generate(tiny_vlms, family_name, images):
    vlm = tiny_vlms[family_name]
    free_run = vlm.generate("What is shown?", images=images[:1], max_new_tokens=12).token_ids
    stop = free_run[4]
    original = vlm.stop_ids, vlm.model.generation_config.eos_token_id
    try:
        vlm.stop_ids = frozenset({stop})
        vlm.model.generation_config.eos_token_id = [stop]
        out = vlm.generate("What is shown?", images=images[:1], max_new_tokens=12)
        expected = hf_greedy(vlm, "What is shown?", images[:1], 12)
    finally:
        vlm.stop_ids, vlm.model.generation_config.eos_token_id = original
    assert out.token_ids == expected == free_run[: free_run.index(stop) + 1]
    assert out.text == vlm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_stop_tokens_are_the_checkpoint_s_own(tmp_path, images):
    """A checkpoint whose generation config names only <|im_end|>: `ar` decodes on past an
    <|endoftext|>, as transformers' generate does with that checkpoint's own settings."""
    model, processor = build_tiny_model("qwen2_5_vl", TEST_SIZE)
    vlm = DiffusionVLM(model, processor)
    im_end, eos = processor.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    first = vlm.generate("What is shown?", images[:1], "ar", 1).token_ids[0]
    head = model.lm_head.weight.data  # not tied to the embeddings: only the predictions change
    head[[first, eos]] = head[[eos, first]]  # the answer now begins with <|endoftext|>
    model.generation_config.eos_token_id = im_end
    vlm.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert loaded.stop_ids == {im_end}
    out = loaded.generate("What is shown?", images[:1], "ar", 16)
    assert out.token_ids[0] == eos and len(out.token_ids) > 1
    assert out.token_ids == hf_greedy(loaded, "What is shown?", images[:1], 16)


def test_stop_tokens_fall_back_to_the_family_s():
    model, processor = build_tiny_model("qwen2_5_vl", TEST_SIZE)
    model.generation_config.eos_token_id = None
    vlm = DiffusionVLM(model, processor)
    assert vlm.stop_ids == set(processor.tokenizer.convert_tokens_to_ids(list(vlm.family.stop_tokens)))


def test_chat_messages_equal_plain_prompt(tiny_vlms, images):
    vlm = tiny_vlms["qwen2_5_vl"]
    plain = vlm.generate("Which shape is left?", images=images, max_new_tokens=10)
    inline = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": images[0]},
                {"type": "image"},
                {"type": "text", "text": "Which shape is left?"},
            ],
        }
    ]
    chat = vlm.generate(inline, images=images[1:], max_new_tokens=10)
    assert chat.token_ids == plain.token_ids


def test_streaming_yields_the_same_tokens(tiny_vlms, images):
    vlm = tiny_vlms["qwen3_vl"]
    chunks = list(vlm.stream("What is shown?", images=images[:1], max_new_tokens=9))
    assert [t for c in chunks for t in c] == vlm.generate(
        "What is shown?", images=images[:1], max_new_tokens=9
    ).token_ids
