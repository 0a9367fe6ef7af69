"""Stage 0a of the demo recipe: the tower reads random characters before it learns the tasks."""

from __future__ import annotations

import random

import pytest
import torch

from fast_dvlm import DiffusionVLM
from fast_dvlm.demo.glyph_pretrain import ALPHABET, LENGTH, GlyphReader, glyph_image, pretrain_glyphs
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


def test_glyph_images_are_seeded_and_their_labels_are_what_is_drawn():
    image, chars = glyph_image(random.Random(3), 128)
    again, same = glyph_image(random.Random(3), 128)
    assert image.size == (128, 128) and list(image.getdata()) == list(again.getdata()) and chars == same
    assert len(chars) == LENGTH and all(0 <= c < len(ALPHABET) for c in chars)
    # the label is read off the drawing: another character string gives another image
    other = [glyph_image(random.Random(seed), 128) for seed in range(20)]
    assert len({tuple(c) for _, c in other}) == 20 and len({im.tobytes() for im, _ in other}) == 20


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fast_vlm"])
def test_the_pretext_moves_only_the_vision_side(family):
    side = 56 if family == "qwen2_5_vl" else 128
    vlm = DiffusionVLM(*build_tiny_model(family, TinySize(image_size=side)))
    logits = GlyphReader(vlm, side).logits([glyph_image(random.Random(0), side)[0]])
    assert logits.shape == (1, LENGTH, len(ALPHABET))
    parts = vlm.model.model
    before = {n: p.detach().clone() for n, p in parts.named_parameters()}
    report = pretrain_glyphs(vlm, side, 2, 4, 1e-3, held_out=4, progress=False)
    assert report["steps"] == 2 and 0.0 <= report["held_out_char_accuracy"] <= 100.0
    moved = {n for n, p in parts.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("language_model") for n in moved)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    def run(checkpoint=None):
        vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize(image_size=128)))
        pretrain_glyphs(vlm, 128, 4, 2, 1e-3, checkpoint=checkpoint, checkpoint_every=2, held_out=2,
                        progress=False)  # fmt: skip
        return vlm.model.state_dict()

    whole = run()
    loss, calls = GlyphReader.loss, []

    def crash_on_third_step(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(self, batch)

    monkeypatch.setattr(GlyphReader, "loss", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "glyph.pt")
    monkeypatch.setattr(GlyphReader, "loss", loss)
    resumed = run(tmp_path / "glyph.pt")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
