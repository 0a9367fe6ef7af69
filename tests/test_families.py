"""Every family loads offline, round-trips through save/load, and rejects what it cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import fast_dvlm
from fast_dvlm import FastDVLMError
from fast_dvlm.models.registry import FAMILIES
from fast_dvlm.prompt import encode_prompt

from .conftest import drawn_image


@pytest.fixture(scope="module")
def saved(tiny_vlms, tmp_path_factory):
    """Each tiny model saved once by fast-dvlm, as a user's checkpoint directory would be."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, vlm in tiny_vlms.items():
        vlm.settings.block_size = 16  # a non-default setting must survive the round trip
        vlm.save_pretrained(root / name)
        vlm.settings.block_size = 32
        paths[name] = root / name
    return paths


def prompt_logits(vlm, images):
    batch = encode_prompt(vlm.processor, "What is in the picture?", images)
    with torch.no_grad():
        return vlm.model(**batch).logits


def test_round_trip_through_fast_dvlm_load(tiny_vlms, saved, family_name, images):
    original = tiny_vlms[family_name]
    loaded = fast_dvlm.load(saved[family_name])
    assert type(loaded.model) is type(original.model)
    assert loaded.settings.mask_token_id == original.settings.mask_token_id
    assert loaded.settings.block_size == 16
    torch.testing.assert_close(prompt_logits(loaded, images[:1]), prompt_logits(original, images[:1]))
    assert (
        loaded.generate("Describe.", images[:1], max_new_tokens=6).token_ids
        == original.generate("Describe.", images[:1], max_new_tokens=6).token_ids
    )


def test_plain_transformers_opens_a_fast_dvlm_checkpoint(tiny_vlms, saved, family_name, images):
    path = saved[family_name]
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    assert model.config.model_type == family_name
    assert model.config.fast_dvlm["mask_token_id"] == processor.tokenizer.mask_token_id
    assert model.config.fast_dvlm["block_size"] == 16
    assert processor.tokenizer.mask_token == "<|mask|>"
    assert processor.chat_template == tiny_vlms[family_name].processor.chat_template


def test_positions_follow_the_family(tiny_vlms, family_name):
    vlm = tiny_vlms[family_name]
    batch = encode_prompt(vlm.processor, "Where?", [drawn_image(3, (128, 128))])  # a 2x2 token grid
    inputs = vlm.family.embed(vlm.model, batch)
    rows, _, length = inputs.position_ids.shape
    assert length == batch["input_ids"].shape[1]
    assert rows == vlm.family.position_rows
    if rows == 3:  # M-RoPE: the rows disagree inside the image, and the text after it is shifted
        assert not torch.equal(inputs.position_ids[1], inputs.position_ids[2])
        assert int(inputs.position_ids.max()) + 1 < length
    else:
        assert inputs.position_ids[0, 0].tolist() == list(range(length))


def test_unknown_family_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FastDVLMError) as err:
        fast_dvlm.load(tmp_path)
    message = str(err.value)
    assert "'llama'" in message and "\n" not in message
    assert all(name in message for name in FAMILIES)


def test_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(FastDVLMError, match="no config.json"):
        fast_dvlm.load(tmp_path)


def test_a_checkpoint_without_weights(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved["qwen2_5_vl"] / "config.json").read_text())
    with pytest.raises(FastDVLMError, match="cannot load the checkpoint"):
        fast_dvlm.load(tmp_path)


@pytest.mark.parametrize("family_name", ["fast_vlm", "qwen2_5_vl"])
def test_embedding_many_samples_at_once_equals_one_by_one(tiny_vlms, family_name, images):
    """Training embeds a whole batch with one tower call; each sample must get what it gets alone."""
    vlm = tiny_vlms[family_name]
    batches = [
        encode_prompt(vlm.processor, "Describe it.", images[:1]),
        encode_prompt(vlm.processor, "No image here, a longer prompt than the others."),
        encode_prompt(vlm.processor, "Compare them.", images[:2]),
    ]
    with torch.no_grad():
        together = vlm.family.embed_many(vlm.model, batches)
        alone = [vlm.family.embed(vlm.model, batch) for batch in batches]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a.inputs_embeds, b.inputs_embeds, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.position_ids, b.position_ids)


def test_fast_vlm_tower_runs_channels_last_with_the_same_visual_tokens(tiny_vlms, images, monkeypatch):
    """The FastViT tower gets its pixels channels-last (faster convolutions); its visual tokens must be
    those of the processor's own layout, as transformers' `generate` computes them."""
    vlm = tiny_vlms["fast_vlm"]
    batch = encode_prompt(vlm.processor, "Compare them.", images[:2])
    pixels = vlm.family.vision_pixels(batch["pixel_values"])
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    assert not batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    tower, layouts = vlm.model.model.get_image_features, []

    def seen(pixel_values, **kwargs):
        layouts.append(pixel_values.is_contiguous(memory_format=torch.channels_last))
        return tower(pixel_values, **kwargs)

    with torch.no_grad():
        reference = tower(batch["pixel_values"], return_dict=True).pooler_output
        monkeypatch.setattr(vlm.model.model, "get_image_features", seen)
        ours = vlm.family.image_features(vlm.model, {"pixel_values": batch["pixel_values"]}).pooler_output
    assert layouts == [True]  # the one way in to the tower, decoding's included, runs it channels-last
    assert reference.abs().max() > 0.1  # a scale at which the tolerance below means something
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
