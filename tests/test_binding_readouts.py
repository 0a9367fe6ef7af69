"""benchmarks/binding_readouts.py at toy size: it reads the entities and answer of every binding
question, schedules the curriculum, and its readouts train the tower without touching the language model."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from PIL import Image

from benchmarks import binding_readouts as study
from fast_dvlm import DiffusionVLM
from fast_dvlm.data.build import build_splits
from fast_dvlm.data.charts import CITIES
from fast_dvlm.demo.vision_pretrain import read_scenes, visual_tokens
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("readouts")
    return build_splits(out, {"train": 3, "val": 2, "test": 0}, 64, 0.5, False, ("train", "val"))


def test_every_binding_question_names_its_entities_and_answer(split):
    scenes = [s for s in read_scenes(split["train"]) if s.task in study.TASKS]
    assert {s.task for s in scenes} == set(study.TASKS)
    for scene in scenes:
        for question, key in scene.questions:
            ids, answer = study.binding(scene.task, question, key)
            named = [study.ENTITIES[i - 1] for i in ids if i]
            assert len(ids) == 2 and named and all(f" {name}" in question for name in named)
            if scene.task == "map":  # the city behind the option letter
                assert answer in CITIES and f"{key}. {answer}" in question
            else:
                assert answer == key
    with pytest.raises(ValueError, match="not a spatial binding question"):
        study.binding("spatial", "What shape is labelled A?", "circle")
    with pytest.raises(ValueError, match="not a counting binding question"):
        study.binding("counting", "How many circles?", "A")


def test_the_curriculum_takes_its_tasks_alone_first_and_keeps_the_total():
    assert study.phases("together", 100, ["spatial"], 30) == [("together", 100)]
    schedule = study.phases("curriculum", 100, ["spatial", "chart"], 30)
    assert schedule == [("spatial", 30), ("chart", 30), ("together", 40)]
    with pytest.raises(ValueError, match="leave nothing"):
        study.phases("curriculum", 60, ["spatial", "chart"], 30)


def test_a_readout_finds_entities_by_content_not_position():
    torch.manual_seed(0)
    readout = study.EntityReadout(16, 4)
    tokens, entities = torch.randn(3, 5, 16), torch.tensor([[1, 2], [3, 0], [4, 5]])
    shuffled = tokens[:, torch.randperm(5)]
    torch.testing.assert_close(readout(tokens, entities), readout(shuffled, entities))
    assert not torch.allclose(readout(tokens, entities), readout(tokens, entities.flip(1)))


def test_readouts_train_the_tower_and_projector_and_leave_the_language_model(split):
    vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize()))
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    train = [s for s in read_scenes(split["train"]) if s.task in study.TASKS]
    val = [s for s in read_scenes(split["val"], first_only=True) if s.task in study.TASKS]
    schedule = [("spatial", 1), ("together", 2)]
    log = study.train_readouts(vlm, train, val, schedule, 2, 1e-3, seed=0, eval_every=100, heads=2)
    assert [(row["step"], row["phase"]) for row in log] == [(1, "spatial"), (3, "together")]
    assert all(set(row["val"]) == set(study.TASKS) for row in log)
    assert all(0 <= v <= 100 for row in log for v in row["val"].values())
    changed = {n for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    language = {n for n in before if any(part in n for part in ("language_model", "lm_head", "embed_tokens"))}
    assert changed and not changed & language
    assert any("projector" in n for n in changed) and any("vision_tower" in n for n in changed)


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
                              ar_freeze_tower=False, heads=1, anchor=0.0, score_readouts=False)  # fmt: skip
    first = study.run_arm("curriculum", data, tmp_path / "work", args)
    assert first["schedule"] == [["spatial", 1], ["together", 1]]
    assert [row["step"] for row in first["readout"]] == [1, 2] and "after" not in first
    monkeypatch.setattr(study, "train_readouts", lambda *a, **k: pytest.fail("the readouts ran again"))
    assert study.run_arm("curriculum", data, tmp_path / "work", args) == first


def test_the_ar_stage_can_oversample_tasks(split):
    assert study.parse_repeat("spatial=3,chart=2") == {"spatial": 3, "chart": 2}
    assert study.parse_repeat("") == {}
    for bad in ("spatial=0", "spatial", "colour=2", "chart=x"):
        with pytest.raises(ValueError, match="expected TASK=TIMES"):
            study.parse_repeat(bad)
    train = split["train"]
    assert study.repeated_split(train, {}) == train
    repeated = study.repeated_split(train, {"spatial": 3, "chart": 2})
    assert repeated.parent == train.parent and repeated != train
    tasks = [s.task for s in read_scenes(train)]
    again = [s.task for s in read_scenes(repeated)]
    assert all(again.count(t) == tasks.count(t) * {"spatial": 3, "chart": 2}.get(t, 1) for t in set(tasks))
    assert all(s.image.is_file() for s in read_scenes(repeated))


def test_each_readout_head_gives_its_own_logits(split):
    vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize()))
    scenes = [s for s in read_scenes(split["train"]) if s.task == "chart"]
    readouts = study.Readouts(vlm, scenes, heads=3)
    logits, answers = readouts.logits("chart", scenes, readouts.tokens(scenes))
    assert logits.shape == (3, sum(len(s.questions) for s in scenes), len(readouts.answers["chart"]))
    assert answers.shape == logits.shape[1:2] and not torch.allclose(logits[0], logits[1])


def test_the_anchor_keeps_the_other_tasks_visual_tokens_nearer_the_base(split):
    scenes = read_scenes(split["train"])
    train = [s for s in scenes if s.task in study.TASKS]
    others = [s for s in scenes if s.task not in study.TASKS]
    val = [s for s in read_scenes(split["val"], first_only=True) if s.task in study.TASKS]
    base = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize()))
    images = [Image.open(s.image).convert("RGB") for s in others]
    with torch.no_grad():
        before = visual_tokens(base, images)

    def drift(weight: float) -> float:
        vlm = copy.deepcopy(base)
        study.train_readouts(vlm, train, val, [("together", 6)], 4, 1e-2, 0, 100, 1, others, weight)
        with torch.no_grad():
            return (visual_tokens(vlm, images) - before).pow(2).mean().item()

    assert drift(100.0) < 0.5 * drift(0.0)
