"""Prompts and images: chat messages, placeholders, and bad input with one clear error."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFile

from fast_dvlm import FastDVLMError
from fast_dvlm.prompt import encode_prompt, image_error, load_image, to_messages


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
        ([{"role": "user", "content": ["hi"]}], 0, "a string or a list of parts"),
        ([{"role": "user", "content": {"type": "text"}}], 0, "a string or a list of parts"),
    ],
)
def test_bad_prompts(prompt, n_images, message, images):
    with pytest.raises(FastDVLMError, match=message):
        to_messages(prompt, images[:n_images])


def test_one_image_instead_of_a_list_is_one_clear_error(tmp_path, images):
    path = tmp_path / "cat.png"
    images[0].save(path)
    for single in (str(path), path, images[0]):
        with pytest.raises(FastDVLMError, match=r"images must be a list of images, got one \w+: wrap it"):
            to_messages("What is it?", single)


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(FastDVLMError, match="not found"):
        load_image(tmp_path / "nope.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(FastDVLMError, match="not a valid image"):
        load_image(corrupt)


def test_an_unreadable_image_is_one_line_without_python_internals(tmp_path, images, monkeypatch):
    # lmms-eval sets this process-wide on import (tests/test_lmms_eval.py may run first)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    with pytest.raises(FastDVLMError) as caught:
        load_image(notes)
    reason = "not a valid image file (no image format recognised)"
    assert str(caught.value) == f"cannot read image {notes}: {reason}"
    png = io.BytesIO()
    images[0].save(png, format="PNG")
    for data in (b"hello", png.getvalue()[:200]):  # in memory: not an image, a truncated one
        with pytest.raises(OSError) as caught:  # PIL may name the source <_io.BytesIO object at 0x...>
            Image.open(io.BytesIO(data)).load()
        reason = image_error(caught.value)
        assert reason.startswith("not a valid image file (") and "<" not in reason and "\n" not in reason


def test_rendered_with_the_processors_own_template(tiny_vlms, images):
    vlm = tiny_vlms["qwen2_5_vl"]
    batch = encode_prompt(vlm.processor, "Hello there", images[:1])
    text = vlm.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "Hello there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<|vision_start|><|image_pad|>" in text
