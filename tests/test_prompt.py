"""Prompts and images: chat messages, placeholders, and bad input with one clear error."""

from __future__ import annotations

import pytest

from fast_dvlm import FastDVLMError
from fast_dvlm.prompt import encode_prompt, load_image, to_messages


def test_string_prompt_puts_images_first(images):
    messages, ordered = to_messages("What is it?", images)
    assert [p["type"] for p in messages[0]["content"]] == ["image", "image", "text"]
    assert len(ordered) == 2


def test_placeholders_are_filled_in_order(images):
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "image", "image": images[1]}]}]
    _, ordered = to_messages(prompt, [images[0]])
    assert [im.size for im in ordered] == [images[0].size, images[1].size]


@pytest.mark.parametrize(
    "prompt,n_images,message",
    [
        ("   ", 0, "prompt is empty"),
        ([], 0, "non-empty"),
        ([{"role": "user", "content": [{"type": "image"}]}], 0, "more image placeholders"),
        ([{"role": "user", "content": "hi"}], 1, "more images were given"),
        ([{"content": "no role"}], 0, "'role' and 'content'"),
    ],
)
def test_bad_prompts(prompt, n_images, message, images):
    with pytest.raises(FastDVLMError, match=message):
        to_messages(prompt, images[:n_images])


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(FastDVLMError, match="not found"):
        load_image(tmp_path / "nope.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(FastDVLMError, match="not a valid image"):
        load_image(corrupt)


def test_rendered_with_the_processors_own_template(tiny_vlms, images):
    vlm = tiny_vlms["qwen2_5_vl"]
    batch = encode_prompt(vlm.processor, "Hello there", images[:1])
    text = vlm.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "Hello there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<|vision_start|><|image_pad|>" in text
