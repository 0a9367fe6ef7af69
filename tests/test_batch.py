"""Batched decoding (`generate_batch`, decoding/batch.py): every answer is the one `generate` gives
alone, token for token in the lossless modes; a row's output does not depend on its batch-mates."""

from __future__ import annotations

import pytest
import torch

from fast_dvlm import FastDVLMError
from fast_dvlm.decoding.base import Pass
from fast_dvlm.decoding.batch import Batch, forward_rows

from .conftest import drawn_image

LOSSLESS = ["ar", "spec-linear", "spec-quadratic"]
SETTINGS = {
    "ar": {},
    "spec-linear": {"block_size": 8},
    "spec-quadratic": {"block_size": 4, "sub_block_size": 1},
}
# eight prompts of different lengths with 0, 1 or 2 images each
PROMPTS = [
    "What is shown?",
    "Describe every shape in the picture, its colour and where it lies.",
    "Hi",
    "Count them.",
    "Which colour covers most of the image, and which the least?",
    "Go on.",
    "Name one thing.",
    "Tell me a long story about these two pictures, with many details.",
]
IMAGE_COUNTS = [1, 0, 2, 1, 0, 2, 1, 2]
CAP = 24


def image_lists(images) -> list[list]:
    return [images[:k] if k < 2 else images for k in IMAGE_COUNTS]


def early_stops(vlm, images) -> frozenset[int]:
    """Stop tokens that end some answers after a few tokens and leave others to run to the cap: a
    token that the third and fourth prompts' free answers hold, plus the model's own."""
    ids = [vlm.generate(p, i, "ar", CAP).token_ids for p, i in zip(PROMPTS, image_lists(images), strict=True)]
    return vlm.stop_ids | {ids[2][5], ids[3][9]}


@pytest.mark.parametrize("mode", LOSSLESS)
def test_lossless_modes_answer_as_alone(tiny_vlms, family_name, images, mode, monkeypatch):
    """Every family, mixed prompt lengths and image counts, answers stopping early at different
    steps, batches of 1 to 8 and a batch refilled as answers leave: each answer is batch-1's."""
    vlm = tiny_vlms[family_name]
    monkeypatch.setattr(vlm, "stop_ids", early_stops(vlm, images))
    lists, settings = image_lists(images), SETTINGS[mode]
    alone = [vlm.generate(p, i, mode, CAP, **settings) for p, i in zip(PROMPTS, lists, strict=True)]
    lengths = {len(a.token_ids) for a in alone}
    assert min(lengths) < CAP and max(lengths) == CAP  # some stop early, some run to the cap
    for size in (1, 2, 5, 8):
        batch = vlm.generate_batch(PROMPTS[:size], lists[:size], mode, CAP, **settings)
        assert [b.token_ids for b in batch] == [a.token_ids for a in alone[:size]], size
        assert all(b.nfe == 1 + sum(s.passes for s in b.trace) for b in batch)
        assert all(b.mode == mode and b.text == a.text for b, a in zip(batch, alone, strict=False))
    refilled = vlm.generate_batch(PROMPTS, lists, mode, CAP, max_batch_size=3, **settings)
    assert [b.token_ids for b in refilled] == [a.token_ids for a in alone]
    if mode == "ar":
        assert [b.nfe for b in refilled] == [a.nfe for a in alone]  # one pass per token, batched or not


@pytest.mark.parametrize("mode", LOSSLESS + ["diffusion"])
def test_cache_equals_recompute_in_a_batch(tiny_vlms, family_name, images, mode):
    """Without a cache (and on transformers' engine) a batch's passes run one by one: batch-1's answers
    exactly, and, in the lossless modes, the lean batch's too."""
    vlm = tiny_vlms[family_name]
    lists = image_lists(images)[:4]
    settings = SETTINGS.get(mode, {"block_size": 4, "sub_block_size": 2, "threshold": 0.5})
    fresh = [
        vlm.generate(p, i, mode, 12, **settings, use_cache=False)
        for p, i in zip(PROMPTS[:4], lists, strict=True)
    ]
    batch_fresh = vlm.generate_batch(PROMPTS[:4], lists, mode, 12, **settings, use_cache=False)
    eager = vlm.generate_batch(PROMPTS[:4], lists, mode, 12, **settings, engine="transformers")
    assert [b.token_ids for b in batch_fresh] == [f.token_ids for f in fresh]
    assert [b.nfe for b in batch_fresh] == [f.nfe for f in fresh]
    assert [b.token_ids for b in eager] == [f.token_ids for f in fresh]
    if mode != "diffusion":
        cached = vlm.generate_batch(PROMPTS[:4], lists, mode, 12, **settings)
        assert [b.token_ids for b in cached] == [f.token_ids for f in fresh]


def started(vlm, batch: Batch, prompt: str, images: list) -> None:
    decoder = vlm.make_decoder("diffusion", vlm.decode_options(16, 4, 2, 0.9))
    vlm.start(decoder, vlm.encode(prompt, images, decoder.options), into=batch)


def test_a_row_does_not_depend_on_its_batch_mates(tiny_vlms, family_name):
    """One batched pass, twice: the same first row (a masked block after its prompt), batch-mates of
    the same shapes but other prompts, images and pass tokens. The first row's logits are bitwise the
    same, and those of the same pass run alone to float rounding."""
    vlm = tiny_vlms[family_name]
    red, blue = drawn_image(5), drawn_image(9)  # the same size, other pixels
    rows = []
    with torch.inference_mode():
        for mates in (
            ("Count the shapes.", [red], "Hello there.", []),
            ("Name the colour.", [blue], "Why so?", []),
        ):
            batch = Batch(vlm.model, vlm.family)
            started(vlm, batch, "What is shown here?", [red])
            started(vlm, batch, mates[0], mates[1])
            started(vlm, batch, mates[2], mates[3])
            sessions = [a.session for a in batch.answers]
            block = torch.tensor([5, 9, 9, 9, 9, 9])
            first = Pass(block, sessions[0].next_positions(6), block_mask(vlm, sessions[0], 6), slice(None))
            seed = len(rows) + 11  # the mates' pass tokens differ between the two runs
            mate_passes = [
                Pass(torch.tensor([seed, seed + 1]), sessions[1].next_positions(2)),
                Pass(
                    torch.tensor([seed] * 4), sessions[2].next_positions(4), block_mask(vlm, sessions[2], 4)
                ),
            ]
            logits = forward_rows(batch.lean, sessions, [first, *mate_passes])
            rows.append(logits[0])
            alone = sessions[0]
            sessions[0].rollback(sessions[0].cache_len - 6)
            reference = alone.forward(first.ids, first.seq, first.mask)
    assert torch.equal(rows[0], rows[1])
    torch.testing.assert_close(rows[0], reference, rtol=1e-4, atol=1e-4)


def block_mask(vlm, session, n: int) -> torch.Tensor:
    from fast_dvlm.conversion.attention import NOISY, Tokens

    decoder = vlm.make_decoder("diffusion", vlm.decode_options(16, 4, 2, 0.9))
    return decoder.block_mask(session, Tokens.make(NOISY, session.next_positions(n), 0))


def test_diffusion_answer_does_not_depend_on_its_batch_mates(tiny_vlms, family_name, monkeypatch):
    """τ = 1.0 unmasks one position per pass, so every answer of a batch takes the same passes and the
    batches' shapes match: the first answer is identical whatever its mates ask about."""
    vlm = tiny_vlms[family_name]
    monkeypatch.setattr(vlm, "stop_ids", frozenset())  # nobody leaves early: the same rows throughout
    settings = {"block_size": 4, "sub_block_size": 2, "threshold": 1.0}
    red, blue, green = drawn_image(5), drawn_image(9), drawn_image(13)
    first = ("What is shown here?", [red])
    a = vlm.generate_batch(
        [first[0], "Count them.", "Why?"], [first[1], [blue], []], "diffusion", 14, **settings
    )
    b = vlm.generate_batch(
        [first[0], "Name it.", "How?"], [first[1], [green], []], "diffusion", 14, **settings
    )
    assert a[0].token_ids == b[0].token_ids and a[0].nfe == b[0].nfe
    assert a[1].token_ids != b[1].token_ids or a[2].token_ids != b[2].token_ids  # the mates did differ


def test_generate_batch_checks_its_input(tiny_vlms, images):
    vlm = tiny_vlms["qwen2_5_vl"]
    assert vlm.generate_batch([]) == []
    with pytest.raises(FastDVLMError, match="one list per prompt"):
        vlm.generate_batch(["a", "b"], [[images[0]]])
    with pytest.raises(FastDVLMError, match="max_batch_size"):
        vlm.generate_batch(["a"], max_batch_size=0)
    with pytest.raises(FastDVLMError, match="unknown decoding mode"):
        vlm.generate_batch(["a"], mode="fast")
    outs = vlm.generate_batch(["Hi", "Describe."], None, "ar", 5)
    assert [o.token_ids for o in outs] == [
        vlm.generate(p, None, "ar", 5).token_ids for p in ("Hi", "Describe.")
    ]


def test_batch_rows_close_the_gap_a_finished_answer_leaves(tiny_vlms, images, monkeypatch):
    """The last row moves into a departed answer's row: later passes use rows 0 .. r-1 and answers stay
    their own (the second answer stops after 3 tokens, the others run on)."""
    vlm = tiny_vlms["qwen2_vl"]
    ids = vlm.generate("Hi", [], "ar", 10).token_ids
    monkeypatch.setattr(vlm, "stop_ids", frozenset({ids[2]}))
    prompts = ["What is shown?", "Hi", "Describe the image.", "Count."]
    lists = [images[:1], [], images, images[1:]]
    alone = [
        vlm.generate(p, i, "spec-linear", 20, block_size=4).token_ids
        for p, i in zip(prompts, lists, strict=True)
    ]
    batch = vlm.generate_batch(prompts, lists, "spec-linear", 20, block_size=4)
    assert len(alone[1]) == 3 and [b.token_ids for b in batch] == alone


@pytest.mark.parametrize("alignment", ["answer", "absolute"])
def test_joining_prompts_prefill_together(tiny_vlms, family_name, images, alignment, monkeypatch):
    """Prompts that join together (mixed lengths, 0/1/2 images) take one vision-tower call and one
    padded prompt pass (DeepStack prompts, which run through transformers, alone); each row's cache
    length, positions, block ids and first-token logits are those of its prompt prefilled alone, with
    blocks aligned to the answer or (block-causal prompt blocks, a pending tail) to absolute positions."""
    if alignment == "absolute" and family_name == "qwen3_vl":
        pytest.skip("absolute alignment does not take DeepStack image prompts, alone or batched")
    vlm = tiny_vlms[family_name]
    monkeypatch.setattr(vlm.settings, "block_alignment", alignment)
    prompts, lists = PROMPTS[:5], image_lists(images)[:5]
    decoder = vlm.make_decoder("spec-linear", vlm.decode_options(16, 8, None, None))
    encoded = [vlm.encode(p, i, decoder.options) for p, i in zip(prompts, lists, strict=True)]
    calls = {"vision": 0, "rows": 0}
    tower = vlm.model.model.get_image_features
    monkeypatch.setattr(
        vlm.model.model,
        "get_image_features",
        lambda *a, **k: calls.__setitem__("vision", calls["vision"] + 1) or tower(*a, **k),
    )
    batch = Batch(vlm.model, vlm.family)
    rows = batch.lean.forward_rows
    monkeypatch.setattr(
        batch.lean,
        "forward_rows",
        lambda *a, **k: calls.__setitem__("rows", calls["rows"] + 1) or rows(*a, **k),
    )
    with torch.inference_mode():
        answers = vlm.start_many([decoder] * len(encoded), encoded, batch)
        monkeypatch.setattr(vlm.model.model, "get_image_features", tower)
        alone = [vlm.start(decoder, e) for e in encoded]
    assert calls["vision"] == 1
    assert calls["rows"] == 1  # Qwen3-VL's image prompts (DeepStack) run alone, its text-only ones together
    for a, b in zip(answers, alone, strict=True):
        s, t = a.session, b.session
        assert (s.cache_len, s.position_offset, s.nfe, s.next_block) == (
            t.cache_len,
            t.position_offset,
            t.nfe,
            t.next_block,
        )
        assert torch.equal(s.blocks, t.blocks)
        assert s.pending == t.pending and (a.first_logits is None) == (b.first_logits is None)
        if b.first_logits is not None:  # (None: a pending tail, whose first token is decoded in its block)
            torch.testing.assert_close(a.first_logits, b.first_logits, rtol=1e-4, atol=1e-4)
            assert int(a.first_logits.argmax()) == int(b.first_logits.argmax())
    if alignment == "absolute":
        assert any(a.session.pending for a in answers)


def test_a_prefilled_row_does_not_depend_on_its_batch_mates(tiny_vlms, family_name):
    """Two joint prefills with the same shapes (the first prompt, then mates of the same lengths and
    image sizes but other text and pixels): the first row's logits are bitwise the same."""
    vlm = tiny_vlms[family_name]
    red, blue = drawn_image(5), drawn_image(9)
    decoder = vlm.make_decoder("ar", vlm.decode_options(8, 4, None, None))
    firsts = []
    with torch.inference_mode():
        for mates in (("Count the shapes.", [red], "Hello there."), ("Name the colour.", [blue], "Why so?")):
            prompts = [("What is shown here?", [red]), (mates[0], mates[1]), (mates[2], [])]
            encoded = [vlm.encode(p, i, decoder.options) for p, i in prompts]
            answers = vlm.start_many([decoder] * 3, encoded, Batch(vlm.model, vlm.family))
            firsts.append(answers[0].first_logits)
    assert torch.equal(firsts[0], firsts[1])
