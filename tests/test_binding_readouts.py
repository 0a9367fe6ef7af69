"""benchmarks/binding_readouts.py at toy size: its tables, an arm's stages kept and reused, and the
AR stage's options (the readouts themselves: tests/test_readouts.py)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import binding_readouts as study
from fast_dvlm import DiffusionVLM, FastDVLMError
from fast_dvlm.data.build import build_splits
from fast_dvlm.demo.readouts import format_repeat, parse_repeat
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("readouts")
    return build_splits(out, {"train": 3, "val": 2, "test": 0}, 64, 0.5, False, ("train", "val"))


def test_the_tables_show_every_logged_step_and_every_scored_model():
    val = dict.fromkeys(study.TASKS, 50.0)
    after = dict.fromkeys((*study.TASKS, "counting"), 60.0) | {"mean": 60.0, "binding": 60.0}
    logged = [{"step": 4, "phase": "together", "seconds": 60, "val": val}]
    results = {
        "together": {"readout": logged, "after": after},
        "ar": {"after": after},
    }
    settings = {"steps": 4, "alone": "spatial", "alone_steps": 1, "ar_steps": 2, "base": "demo-ar",
                "batch_size": 2, "lr": 1e-3, "ar_lr": 5e-4, "ar_repeat": {"spatial": 3},
                "ar_freeze_tower": True}  # fmt: skip
    text = study.markdown(results, after | {"mean": 55.0}, settings)
    assert "| `together` | 4 | together | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 1.0 |" in text
    assert "| `together` + AR |" in text and "| `ar` + AR |" in text and "**55.0**" in text
    assert "--arms together,ar --steps 4" in text
    assert (
        "--ar-steps 2 --ar-repeat spatial=3 --ar-freeze-tower`" in text
        and "tower and projector frozen" in text
    )


def test_an_arm_keeps_its_readout_stage_and_a_rerun_reuses_it(split, tmp_path, monkeypatch):
    base = tmp_path / "base"
    DiffusionVLM(*build_tiny_model("fast_vlm", TinySize())).save_pretrained(base)
    data = split["train"].parent
    args = argparse.Namespace(base=str(base), steps=2, alone="spatial", alone_steps=1, batch_size=2, lr=1e-3,
                              seed=0, eval_every=100, ar_steps=0, ar_lr=5e-4, ar_repeat={},
                              ar_freeze_tower=False, heads=1, anchor=0.0, score_readouts=False,
                              tasks=study.BINDING_TASKS)  # fmt: skip
    first = study.run_arm("curriculum", data, tmp_path / "work", args)
    assert first["schedule"] == [["spatial", 1], ["together", 1]]
    assert [row["step"] for row in first["readout"]] == [1, 2] and "after" not in first
    monkeypatch.setattr(study, "train_readouts", lambda *a, **k: pytest.fail("the readouts ran again"))
    assert study.run_arm("curriculum", data, tmp_path / "work", args) == first


def test_the_repeat_option_names_tasks_and_counts():
    assert parse_repeat("spatial=3,chart=2") == {"spatial": 3, "chart": 2}
    assert parse_repeat("") == {}
    assert format_repeat(parse_repeat("spatial=3,chart=2")) == "spatial=3,chart=2"
    for bad in ("spatial=0", "spatial", "colour=2", "chart=x"):
        with pytest.raises(FastDVLMError, match="expected TASK=TIMES"):
            parse_repeat(bad)
