"""`make-demo` end to end at toy scale: every stage runs, in order, and a rerun skips finished stages."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fast_dvlm import DiffusionVLM
from fast_dvlm.demo.recipe import ARCHITECTURES, DemoRecipe, export_fp16, make_demo, write_model_card
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.models.family import TinySize

TOY_SIDE = {"qwen2_5_vl": 56, "fast_vlm": 128}  # FastViT's stride is 64: a 2x2 grid at least


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fast_vlm"])
def test_every_stage_runs_and_a_rerun_skips_them(tmp_path, family):
    side = TOY_SIDE[family]
    recipe = DemoRecipe(
        family=family, image_size=side, size=TinySize(image_size=side), train_per_task=2, eval_per_task=1,
        glyph_steps=2, vision_steps=2, ar_steps=2, ar_restart_steps=2, convert_steps=2, batch_size=4,
        vocab_size=300,
    )  # fmt: skip
    paths = make_demo(tmp_path, recipe, export=False)
    assert paths["ar"] == tmp_path / "ar-restart" and paths["converted"] == tmp_path / "converted"
    for stage, steps in (("ar", 2), ("ar-restart", 2), ("converted", 2)):
        log = [json.loads(line) for line in (tmp_path / stage / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(1, steps + 1))
    first, second = (DiffusionVLM.from_pretrained(tmp_path / s) for s in ("ar", "ar-restart"))
    assert any(  # the second cycle trained on from the first
        not p.equal(q) for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True)
    )
    timings = json.loads((tmp_path / "recipe.json").read_text())["timings"]
    assert set(timings) == {"data", "glyph pre-training", "vision pre-training", "AR training", "conversion"}
    assert json.loads((tmp_path / "glyph" / "pretrain.json").read_text())["steps"] == 2
    stamp = (tmp_path / "converted" / "model.safetensors").stat().st_mtime_ns
    make_demo(tmp_path, recipe, export=False)
    assert (tmp_path / "converted" / "model.safetensors").stat().st_mtime_ns == stamp

    # the card names the work directory it came from and scores the exported fp16 weights
    export_fp16(tmp_path / "converted", tmp_path / "export")
    write_model_card(tmp_path / "export", "demo", "spec-linear", recipe, timings, tmp_path)
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"fast-dvlm make-demo --workdir {tmp_path}`" in card
    assert ARCHITECTURES[family] in card
    rows = [
        line.split("|")[1:4] for line in card.splitlines() if line.startswith("| ") and "items" not in line
    ]
    assert len(rows) == 11 and all(int(items) == 1 for _, _, items in rows)


def test_a_workdir_resumed_with_other_settings_is_refused(tmp_path):
    recipe = DemoRecipe(train_per_task=1, eval_per_task=1, glyph_steps=0, vision_steps=1, ar_steps=1,
                        ar_restart_steps=1, convert_steps=1, batch_size=2, vocab_size=300)  # fmt: skip
    make_demo(tmp_path, recipe, export=False)
    with pytest.raises(FastDVLMError, match="ar_steps differ"):
        make_demo(tmp_path, replace(recipe, ar_steps=3), export=False)
