"""The decoding engine: lossless self-speculation, cache = recompute, NFE accounting, validation."""

from __future__ import annotations

import pytest
import torch

from fast_dvlm import FastDVLMError
from fast_dvlm.decoding import DecodeOptions
from fast_dvlm.decoding.cost import PassCost
from fast_dvlm.decoding.diffusion import BlockDiffusionDecoder
from fast_dvlm.decoding.spec_linear import accepted_length

SPEC_MODES = ["spec-linear", "spec-quadratic"]
# (number of images, answer length cap): several prompts, some lengths not a multiple of any block
CASES = [(0, 37), (1, 23), (2, 40)]


@pytest.mark.parametrize("block_size", [2, 4, 8, 32])
def test_speculative_modes_are_lossless(tiny_vlms, family_name, images, block_size):
    vlm = tiny_vlms[family_name]
    for n_images, length in CASES:
        prompt = f"Question {n_images}: what is shown?"
        reference = vlm.hf_generate(prompt, images[:n_images], length).token_ids
        assert vlm.generate(prompt, images[:n_images], "ar", length).token_ids == reference
        for mode in SPEC_MODES:
            out = vlm.generate(
                prompt, images[:n_images], mode, length, block_size=block_size, sub_block_size=1
            )
            assert out.token_ids == reference, (mode, n_images)


@pytest.mark.parametrize("mode", SPEC_MODES + ["diffusion"])
def test_answer_ending_mid_block(tiny_vlms, images, mode):
    """A stop token inside a block ends the answer there: the same tokens as before, nothing after."""
    vlm = tiny_vlms["qwen2_5_vl"]
    settings = {"block_size": 8, "sub_block_size": 4, "threshold": 0.5}
    free = vlm.generate("Describe.", images[:1], mode, 30, **settings).token_ids
    stop = free[13]  # position 13: mid-block for B = 8
    original = vlm.stop_ids
    try:
        vlm.stop_ids = frozenset({stop})
        reference = vlm.hf_generate("Describe.", images[:1], 30).token_ids
        out = vlm.generate("Describe.", images[:1], mode, 30, **settings)
    finally:
        vlm.stop_ids = original
    assert out.token_ids == free[: free.index(stop) + 1]
    if mode != "diffusion":
        assert out.token_ids == reference


def test_diffusion_with_unit_blocks_is_ar(tiny_vlms, family_name, images):
    vlm = tiny_vlms[family_name]
    ar = vlm.generate("Tell me.", images[:1], "ar", 25)
    out = vlm.generate("Tell me.", images[:1], "diffusion", 25, block_size=1, sub_block_size=1, threshold=1.0)
    assert out.token_ids == ar.token_ids
    assert out.nfe == ar.nfe


@pytest.mark.parametrize(
    "mode,settings",
    [
        ("ar", {}),
        ("diffusion", {"block_size": 8, "sub_block_size": 4, "threshold": 0.3}),
        ("spec-linear", {"block_size": 4}),
        ("spec-quadratic", {"block_size": 4, "sub_block_size": 1}),
    ],
)
def test_cache_equals_recompute(tiny_vlms, family_name, images, mode, settings, monkeypatch):
    """The KV cache holds exactly what a fresh causal pass over the committed prefix computes. Both
    runs read one pass-cost curve (each engine has its own), so the drafting policy chooses alike."""
    curve = PassCost((1, 8, 32), (1.0, 1.5, 2.5))
    monkeypatch.setattr(PassCost, "of", classmethod(lambda cls, session, refresh=False: curve))
    vlm = tiny_vlms[family_name]
    cached = vlm.generate("Which one?", images, mode, 20, **settings)
    fresh = vlm.generate("Which one?", images, mode, 20, **settings, use_cache=False)
    assert cached.token_ids == fresh.token_ids
    assert cached.nfe == fresh.nfe


@pytest.mark.parametrize("mode", SPEC_MODES)
def test_nfe_accounting(tiny_vlms, images, mode):
    vlm = tiny_vlms["fast_vlm"]
    ar = vlm.generate("Count.", images[:1], "ar", 33)
    out = vlm.generate("Count.", images[:1], mode, 33, block_size=4, sub_block_size=4)
    assert ar.nfe == len(ar.token_ids)
    assert out.nfe == 1 + sum(step.passes for step in out.trace)  # the prefill, then every step's passes
    # linear: draft + verify per block, or one AR pass for one token where the policy drafts nothing;
    # quadratic: one pass per block, plus the first draft
    if mode == "spec-linear":
        assert all(step.passes == 2 or (step.passes, step.tokens) == (1, 1) for step in out.trace)
        assert out.trace[0].passes == 2  # the first step has no history: it drafts
    else:
        assert [step.passes for step in out.trace] == [2] + [1] * (len(out.trace) - 1)
    assert sum(step.tokens for step in out.trace) + 1 >= len(out.token_ids)
    assert out.nfe <= ar.nfe + len(out.trace)  # never more than AR plus one pass per block
    assert all(1 <= step.tokens <= 4 for step in out.trace)


def test_stream_yields_one_chunk_per_block(tiny_vlms, images):
    vlm = tiny_vlms["qwen2_vl"]
    chunks = list(vlm.stream("Go on.", images[:1], "spec-linear", 30, block_size=8))
    full = vlm.generate("Go on.", images[:1], "spec-linear", 30, block_size=8)
    assert [t for c in chunks for t in c] == full.token_ids
    assert [len(c) for c in chunks[1:]] == [min(s.tokens, 30) for s in full.trace][: len(chunks) - 1]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"block_size": 8, "sub_block_size": 3}, "positive divisor"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\]"),
        ({"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
        ({"block_size": 0}, "at least 1"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_contradictory_settings_are_rejected(tiny_vlms, settings, message):
    vlm = tiny_vlms["qwen2_5_vl"]
    args = {"max_new_tokens": 8} | settings
    with pytest.raises(FastDVLMError, match=message):
        vlm.generate("Hi", mode="diffusion", **args)


def test_an_unknown_clean_attention_set_after_loading_is_rejected(tiny_vlms, monkeypatch):
    vlm = tiny_vlms["qwen2_5_vl"]
    monkeypatch.setattr(vlm.settings, "clean_attention", "full")
    with pytest.raises(FastDVLMError, match="clean_attention must be 'causal' or 'block-causal', got 'full'"):
        vlm.generate("Hi", mode="diffusion", max_new_tokens=8)


def test_unknown_mode(tiny_vlms):
    with pytest.raises(FastDVLMError, match="unknown decoding mode 'fast'.*spec-linear"):
        tiny_vlms["qwen2_5_vl"].generate("Hi", mode="fast")


def test_accepted_length_on_toy_drafts():
    draft = torch.tensor([7, 1, 2, 3, 4])
    assert accepted_length(draft, torch.tensor([1, 2, 9, 4, 5])) == 2  # ar[2] = 9 rejects draft[3]
    assert accepted_length(draft, torch.tensor([1, 2, 3, 4, 8])) == 4  # all confirmed
    assert accepted_length(draft, torch.tensor([0, 2, 3, 4, 8])) == 0


def test_unmask_on_a_toy_vocabulary():
    """Threshold 0.6 over a 4-token vocabulary (id 3 = [MASK]); row r predicts position 1 + r."""
    options = DecodeOptions(8, frozenset(), mask_id=3, block_size=4, sub_block_size=4, threshold=0.6)
    decoder = BlockDiffusionDecoder(options)
    block, masked = torch.tensor([0, 3, 3, 3]), torch.tensor([False, True, True, True])
    logits = torch.tensor(
        [
            [0.0, 4.0, 0.0, 9.0],  # position 1: id 1 at p ~ 0.95 (the mask id's logit is ignored)
            [0.2, 0.0, 0.1, 0.0],  # position 2: nearly uniform, p < 0.6 -> stays masked
            [0.0, 0.0, 4.0, 0.0],  # position 3: id 2 at p ~ 0.95
        ]
    )
    decoder.unmask(block, masked, logits, first_position=1)
    assert block.tolist() == [0, 1, 3, 2]
    assert masked.tolist() == [False, False, True, False]
    # below the threshold everywhere: the single most confident masked position is still taken
    block, masked = torch.tensor([0, 3, 3, 3]), torch.tensor([False, True, True, True])
    flat = torch.zeros(3, 4)
    flat[1, 0] = 0.5
    decoder.unmask(block, masked, flat, first_position=1)
    assert block.tolist() == [0, 3, 0, 3] and masked.tolist() == [False, True, False, True]
    # a position already known is never overwritten, however confident the row
    block, masked = torch.tensor([0, 2, 3, 3]), torch.tensor([False, False, True, True])
    decoder.unmask(block, masked, logits, first_position=1)
    assert block.tolist() == [0, 2, 3, 2]
