"""`make-demo` end to end at toy scale: every stage runs, in order, and a rerun skips finished stages."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fast_dvlm import DiffusionVLM, cli
from fast_dvlm.demo import recipe as recipe_module
from fast_dvlm.demo.recipe import (
    ARCHITECTURES,
    DemoRecipe,
    describe_timings,
    export_fp16,
    make_demo,
    write_model_card,
)
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.models.family import TinySize
from fast_dvlm.train.trainer import convert

TOY_SIDE = {"qwen2_5_vl": 56, "fast_vlm": 128}  # FastViT's stride is 64: a 2x2 grid at least


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fast_vlm"])
def test_every_stage_runs_and_a_rerun_skips_them(tmp_path, family, monkeypatch):
    trained_from = {}  # each AR/conversion stage: the model and the split it trained from

    def recorded(base, data, out, config, *args, **kwargs):
        trained_from[Path(out).name] = (Path(base).name, Path(data).name)
        return convert(base, data, out, config, *args, **kwargs)

    monkeypatch.setattr(recipe_module, "convert", recorded)
    side = TOY_SIDE[family]
    recipe = DemoRecipe(
        family=family, image_size=side, size=TinySize(image_size=side), train_per_task=2, eval_per_task=1,
        glyph_steps=2, vision_steps=2, ar_steps=2, readout_steps=3, readout_alone=("spatial",),
        readout_alone_steps=1, readout_heads=2, ar_restart_steps=2, ar_restart_repeat={"spatial": 5},
        convert_steps=2, batch_size=4, vocab_size=300,
    )  # fmt: skip
    paths = make_demo(tmp_path, recipe, export=False)
    assert paths["ar"] == tmp_path / "ar-restart" and paths["converted"] == tmp_path / "converted"
    for stage, steps in (("ar", 2), ("ar-restart", 2), ("converted", 2)):
        log = [json.loads(line) for line in (tmp_path / stage / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(1, steps + 1))
    readouts = json.loads((tmp_path / "readouts" / "readouts.json").read_text())
    assert readouts["schedule"] == [["spatial", 1], ["together", 2]] and readouts["heads"] == 2
    assert [row["step"] for row in readouts["log"]] == [1, 3]
    stages = ("ar", "readouts", "ar-restart")
    first, tower, second = (DiffusionVLM.from_pretrained(tmp_path / s) for s in stages)

    def changed(a: DiffusionVLM, b: DiffusionVLM) -> set[str]:
        """Which side moved between `a` and `b`: "vision", "language" or both."""
        theirs = dict(b.model.named_parameters())
        moved = [n for n, p in a.model.named_parameters() if not p.equal(theirs[n])]
        return {"language" if n.startswith(("model.language_model", "lm_head")) else "vision" for n in moved}

    # the readouts moved the vision side only; the second cycle trained on from them, on the split
    # with each spatial record five times
    assert changed(first, tower) == {"vision"} and "language" in changed(tower, second)
    assert trained_from == {
        "ar": ("vision", "train.json"),
        "ar-restart": ("readouts", "train-repeat-spatial5.json"),
        "converted": ("ar-restart", "train.json"),
    }
    # the second cycle's split holds each spatial record five times
    repeated = json.loads((tmp_path / "data" / "train-repeat-spatial5.json").read_text())
    train = json.loads((tmp_path / "data" / "train.json").read_text())
    assert [r["task"] for r in repeated].count("spatial") == 5 * [r["task"] for r in train].count("spatial")
    assert len(repeated) == len(train) + 4 * [r["task"] for r in train].count("spatial")
    timings = json.loads((tmp_path / "recipe.json").read_text())["timings"]
    assert describe_timings(timings).endswith(f"; {sum(timings.values()):.1f} min in all")
    assert set(timings) == {
        "data", "glyph pre-training", "vision pre-training", "binding readouts", "AR training", "conversion"
    }  # fmt: skip
    assert json.loads((tmp_path / "glyph" / "pretrain.json").read_text())["steps"] == 2
    stamp = (tmp_path / "converted" / "model.safetensors").stat().st_mtime_ns
    make_demo(tmp_path, recipe, export=False)
    assert (tmp_path / "converted" / "model.safetensors").stat().st_mtime_ns == stamp

    # the card names the work directory it came from and scores the exported fp16 weights
    export_fp16(tmp_path / "converted", tmp_path / "export")
    write_model_card(tmp_path / "export", "demo", "spec-linear", recipe, timings, tmp_path)
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"fast-dvlm make-demo --workdir {tmp_path} --readout-steps 3 --ar-repeat spatial=5`" in card
    assert ARCHITECTURES[family] in card
    assert "binding readouts (`fast_dvlm.demo.readouts`): 3 steps, 2 readouts a task" in card
    assert "records of spatial x5\n  repeated" in card
    assert f"time on 2 CPU cores: {describe_timings(timings)}" in card
    rows = [
        line.split("|")[1:4] for line in card.splitlines() if line.startswith("| ") and "items" not in line
    ]
    assert len(rows) == 11 and all(int(items) == 1 for _, _, items in rows)


def test_a_workdir_resumed_with_other_settings_is_refused(tmp_path):
    recipe = DemoRecipe(train_per_task=1, eval_per_task=1, glyph_steps=0, vision_steps=1, ar_steps=1,
                        readout_steps=0, ar_restart_steps=1, convert_steps=1, batch_size=2,
                        vocab_size=300)  # fmt: skip
    make_demo(tmp_path, recipe, export=False)
    assert not (tmp_path / "readouts").exists()  # no readout steps: the stage is skipped
    with pytest.raises(FastDVLMError, match="ar_steps differ"):
        make_demo(tmp_path, replace(recipe, ar_steps=3), export=False)


def test_a_recipe_that_contradicts_itself_is_refused_before_any_training():
    with pytest.raises(FastDVLMError, match="counting: not among the readouts. tasks"):
        DemoRecipe(readout_steps=1500, readout_alone=("counting",))
    with pytest.raises(FastDVLMError, match="leave nothing"):
        DemoRecipe(readout_steps=600, readout_alone_steps=200)
    with pytest.raises(FastDVLMError, match="ar_restart_repeat colour=2"):
        DemoRecipe(ar_restart_repeat={"colour": 2})
    with pytest.raises(FastDVLMError, match="readout_heads: at least one"):
        DemoRecipe(readout_steps=1500, readout_heads=0)
    with pytest.raises(FastDVLMError, match="counting: no readout"):
        DemoRecipe(readout_steps=1500, readout_tasks=("spatial", "counting"))
    with pytest.raises(FastDVLMError, match="chart: not among the readouts. tasks .steps, arithmetic."):
        DemoRecipe(readout_steps=1500, readout_tasks=("steps", "arithmetic"), readout_alone=("chart",))
    numbers = DemoRecipe(readout_steps=1500, readout_tasks=("steps", "arithmetic"), readout_alone=("steps",))
    schedule = numbers.readout_schedule()
    assert schedule == [("steps", 300), ("together", 1200)]


def test_the_command_ends_with_the_recorded_timings_and_where_the_models_are(tmp_path, monkeypatch, capsys):
    timings = {"data": 2.0, "AR training": 80.25}

    recipes = []

    def finished_run(workdir, recipe, export):
        recipes.append(recipe)
        (Path(workdir) / "recipe.json").write_text(json.dumps({"timings": timings}))
        return {"ar": Path(workdir) / "ar-restart", "converted": Path(workdir) / "converted"}

    monkeypatch.setattr(recipe_module, "make_demo", finished_run)
    assert cli.main(["make-demo", "--workdir", str(tmp_path), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert "make-demo: data 2.0 min, AR training 80.2 min; 82.2 min in all" in out
    assert f"converted: {tmp_path / 'converted'}" in out and "exported" not in out
    assert recipes.pop() == DemoRecipe()
    args = [
        "make-demo",
        "--workdir",
        str(tmp_path),
        "--no-export",
        "--readout-steps",
        "1500",
        "--ar-repeat",
        "spatial=5",
    ]
    assert cli.main(args) == 0
    assert recipes.pop() == DemoRecipe(readout_steps=1500, ar_restart_repeat={"spatial": 5})
    assert cli.main(args[:-1] + ["colour=2"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("fast-dvlm: error: --ar-repeat item 'colour=2': expected TASK=TIMES")
        and "\n" not in error
    )
