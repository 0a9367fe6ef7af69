"""The [MASK] token: a free padded row is reused, otherwise the embeddings grow; idempotent."""

from __future__ import annotations

import torch

from fast_dvlm import DiffusionVLM
from fast_dvlm.models.mask_token import add_mask_token
from fast_dvlm.models.tiny import build_tiny_model


def test_reuses_the_first_free_padded_row():
    model, processor = build_tiny_model("qwen2_5_vl")
    tokenizer = processor.tokenizer
    rows = model.get_input_embeddings().num_embeddings
    # the builder pads rows like a real checkpoint; the mask took the first id past the text vocab
    assert tokenizer.mask_token == "<|mask|>"
    assert tokenizer.mask_token_id == len(tokenizer) - 1 < rows
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[tokenizer.mask_token_id], weight[: tokenizer.mask_token_id].mean(0))


def test_idempotent():
    model, processor = build_tiny_model("fast_vlm")
    before = model.get_input_embeddings().weight.clone()
    length = len(processor.tokenizer)
    first = add_mask_token(model, processor.tokenizer)
    second = add_mask_token(model, processor.tokenizer)
    assert first == second == processor.tokenizer.mask_token_id
    assert len(processor.tokenizer) == length
    torch.testing.assert_close(model.get_input_embeddings().weight, before)


def test_grows_the_embeddings_when_no_row_is_free():
    model, processor = build_tiny_model("qwen2_vl")
    tokenizer = processor.tokenizer
    tokenizer.mask_token = None
    model.resize_token_embeddings(len(tokenizer))  # no padded rows left
    mask_id = add_mask_token(model, tokenizer, token="<|another_mask|>")
    assert mask_id == len(tokenizer) - 1
    assert model.get_input_embeddings().num_embeddings == mask_id + 1
    assert model.get_output_embeddings().weight.shape[0] == mask_id + 1


def test_keeps_an_existing_mask_token_and_records_it():
    model, processor = build_tiny_model("qwen3_vl")
    tokenizer = processor.tokenizer
    tokenizer.mask_token = None
    tokenizer.add_special_tokens({"mask_token": "|<MASK>|"})
    expected = tokenizer.convert_tokens_to_ids("|<MASK>|")
    vlm = DiffusionVLM(model, processor)
    assert vlm.settings.mask_token_id == expected
    assert model.config.fast_dvlm["mask_token_id"] == expected
