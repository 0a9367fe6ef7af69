"""The binding readouts stage (`fast_dvlm.demo.readouts`) at toy size: it reads the entities and
answer of every binding question, schedules the curriculum, trains the tower without touching the
language model, keeps the anchored tasks' tokens near the base, and resumes exactly."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from PIL import Image

from fast_dvlm import DiffusionVLM
from fast_dvlm.data.build import build_splits
from fast_dvlm.data.charts import CITIES
from fast_dvlm.demo import readouts as stage
from fast_dvlm.demo.vision_pretrain import read_scenes, visual_tokens
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("readouts")
    return build_splits(out, {"train": 3, "val": 2, "test": 0}, 64, 0.5, False, ("train", "val"))


def tiny_vlm() -> DiffusionVLM:
    torch.manual_seed(0)
    return DiffusionVLM(*build_tiny_model("fast_vlm", TinySize()))


def test_every_binding_question_names_its_entities_and_answer(split):
    scenes = [s for s in read_scenes(split["train"]) if s.task in stage.BINDING_TASKS]
    assert {s.task for s in scenes} == set(stage.BINDING_TASKS)
    for scene in scenes:
        for question, key in scene.questions:
            ids, answer = stage.binding(scene.task, question, key)
            named = [stage.ENTITIES[i - 1] for i in ids if i]
            assert len(ids) == 2 and named and all(f" {name}" in question for name in named)
            if scene.task == "map":  # the city behind the option letter
                assert answer in CITIES and f"{key}. {answer}" in question
            else:
                assert answer == key
    with pytest.raises(ValueError, match="not a spatial binding question"):
        stage.binding("spatial", "What shape is labelled A?", "circle")
    with pytest.raises(ValueError, match="not a counting binding question"):
        stage.binding("counting", "How many circles?", "A")


def test_the_number_readouts_ask_for_each_number_by_its_place(split):
    scenes = {s.task: s for s in read_scenes(split["train"]) if s.task in stage.NUMBER_PLACES}
    steps, arithmetic = scenes["steps"], scenes["arithmetic"]
    first, second, third = stage.numbers(steps)  # as the answer lists them, left to right
    assert f"are {first}, {second} and {third}." in steps.answer
    assert int(first) + int(second) + int(third) == int(steps.questions[0][1])
    larger, smaller = stage.numbers(arithmetic)
    assert int(larger) >= int(smaller) and int(larger) + int(smaller) == int(arithmetic.questions[0][1])
    assert stage.targets(steps) == [([1, 0], first), ([2, 0], second), ([3, 0], third)]
    assert stage.targets(arithmetic, first_only=True) == [([1, 0], larger), ([2, 0], smaller)]
    with pytest.raises(ValueError, match="without its numbers"):
        stage.numbers(replace(steps, answer="The answer is 12."))
    with pytest.raises(ValueError, match="without its sum and larger number"):
        stage.numbers(replace(arithmetic, questions=arithmetic.questions[:1]))


def test_the_curriculum_takes_its_tasks_alone_first_and_keeps_the_total():
    assert stage.curriculum(100, [], 30) == [("together", 100)]
    schedule = stage.curriculum(100, ["spatial", "chart"], 30)
    assert schedule == [("spatial", 30), ("chart", 30), ("together", 40)]
    with pytest.raises(FastDVLMError, match="leave nothing"):
        stage.curriculum(60, ["spatial", "chart"], 30)
    with pytest.raises(FastDVLMError, match="counting: not among the readouts' tasks"):
        stage.curriculum(100, ["counting"], 30)
    with pytest.raises(FastDVLMError, match="counting: no readout"):
        stage.curriculum(100, [], 30, ("spatial", "counting"))
    assert stage.curriculum(100, ["steps"], 30, ("chart", "steps")) == [("steps", 30), ("together", 70)]
    with pytest.raises(FastDVLMError, match="each task once"):
        stage.curriculum(100, ["spatial", "spatial"], 30)
    with pytest.raises(FastDVLMError, match="at least 1 step a task"):
        stage.curriculum(100, ["spatial"], -5)


def test_a_readout_finds_entities_by_content_not_position():
    torch.manual_seed(0)
    readout = stage.EntityReadout(16, 4)
    tokens, entities = torch.randn(3, 5, 16), torch.tensor([[1, 2], [3, 0], [4, 5]])
    shuffled = tokens[:, torch.randperm(5)]
    torch.testing.assert_close(readout(tokens, entities), readout(shuffled, entities))
    assert not torch.allclose(readout(tokens, entities), readout(tokens, entities.flip(1)))


def test_each_readout_head_gives_its_own_logits(split):
    scenes = [s for s in read_scenes(split["train"]) if s.task == "chart"]
    readouts = stage.Readouts(tiny_vlm(), scenes, heads=3)
    logits, answers = readouts.logits("chart", scenes, readouts.tokens(scenes))
    assert logits.shape == (3, sum(len(s.questions) for s in scenes), len(readouts.answers["chart"]))
    assert answers.shape == logits.shape[1:2] and not torch.allclose(logits[0], logits[1])


def test_readouts_train_the_tower_and_projector_and_leave_the_language_model(split):
    vlm = tiny_vlm()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    scenes, val = read_scenes(split["train"]), read_scenes(split["val"], first_only=True)
    schedule = [("spatial", 1), ("together", 2)]
    report = stage.train_readouts(vlm, scenes, val, schedule, 2, 1e-3, heads=2, eval_every=9, progress=False)
    assert [(row["step"], row["phase"]) for row in report["log"]] == [(1, "spatial"), (3, "together")]
    assert all(set(row["val"]) == set(stage.BINDING_TASKS) for row in report["log"])
    assert all(0 <= v <= 100 for row in report["log"] for v in row["val"].values())
    changed = {n for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed == {n for n in before if not n.startswith(("model.language_model", "lm_head"))}
    assert any("projector" in n for n in changed) and any("vision_tower" in n for n in changed)


def test_number_readouts_train_beside_the_binding_ones(split):
    vlm = tiny_vlm()
    scenes, val = read_scenes(split["train"]), read_scenes(split["val"])
    tasks = ("chart", "steps", "arithmetic")
    report = stage.train_readouts(
        vlm, scenes, val, [("steps", 1), ("together", 1)], 2, 1e-3, eval_every=9, progress=False, tasks=tasks
    )
    assert [row["phase"] for row in report["log"]] == ["steps", "together"]
    assert all(set(row["val"]) == set(tasks) for row in report["log"])
    readouts = stage.Readouts(vlm, [s for s in scenes if s.task in tasks], tasks=tasks)
    assert readouts.heads["steps"][0].entity.num_embeddings == 4  # padding and three places
    assert set(readouts.answers["steps"]) <= {str(d) for d in range(1, 10)}


def test_the_anchor_keeps_the_other_tasks_visual_tokens_nearer_the_base(split):
    scenes, val = read_scenes(split["train"]), read_scenes(split["val"], first_only=True)
    others = [s for s in scenes if s.task not in stage.BINDING_TASKS]
    base = tiny_vlm()
    images = [Image.open(s.image).convert("RGB") for s in others]
    with torch.no_grad():
        before = visual_tokens(base, images)

    def drift(weight: float) -> float:
        vlm = copy.deepcopy(base)
        stage.train_readouts(vlm, scenes, val, [("together", 6)], 4, 1e-2, 0, 1, weight, 100, progress=False)
        with torch.no_grad():
            return (visual_tokens(vlm, images) - before).pow(2).mean().item()

    assert drift(100.0) < 0.5 * drift(0.0)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(split, tmp_path, monkeypatch):
    scenes, val = read_scenes(split["train"]), read_scenes(split["val"], first_only=True)
    schedule = [("spatial", 4), ("together", 16)]  # 20 steps: 2 of warm-up, so the crash falls in it
    loss, calls = stage.Readouts.loss, []

    def counted(self, *args):
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return loss(self, *args)

    def run(checkpoint=None):
        vlm = tiny_vlm()
        report = stage.train_readouts(vlm, scenes, val, schedule, 2, 1e-2, heads=2, anchor_weight=1.0,
                                      eval_every=5, checkpoint=checkpoint, checkpoint_every=1,
                                      progress=False)  # fmt: skip
        return vlm.model.state_dict(), [(row["step"], row["val"]) for row in report["log"]]

    monkeypatch.setattr(stage.Readouts, "loss", counted)
    crash_at = 0
    whole, log = run()
    crash_at = len(calls) + 2  # on the second step: the checkpoint holds step 1, inside the warm-up
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "readouts.pt")
    assert (tmp_path / "readouts.pt").is_file()
    calls.clear()
    resumed, resumed_log = run(tmp_path / "readouts.pt")
    assert len(calls) == 19  # the resumed run trained the 19 steps left, not all 20
    assert [step for step, _ in log] == [4, 5, 10, 15, 20] and resumed_log == log
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_the_ar_stage_can_oversample_tasks(split):
    train = split["train"]
    assert stage.repeated_split(train, {}) == train
    repeated = stage.repeated_split(train, {"spatial": 3, "chart": 2})
    assert repeated.parent == train.parent and repeated != train
    tasks = [s.task for s in read_scenes(train)]
    again = [s.task for s in read_scenes(repeated)]
    assert all(again.count(t) == tasks.count(t) * {"spatial": 3, "chart": 2}.get(t, 1) for t in set(tasks))
    assert all(s.image.is_file() for s in read_scenes(repeated))


def test_readouts_that_cannot_train_are_refused_before_any_step(split):
    scenes, val = read_scenes(split["train"]), read_scenes(split["val"], first_only=True)
    with pytest.raises(FastDVLMError, match="at least one a task"):
        stage.train_readouts(tiny_vlm(), scenes, val, [("together", 2)], 2, 1e-3, heads=0, progress=False)
    binding_only = [s for s in scenes if s.task in stage.BINDING_TASKS]
    with pytest.raises(FastDVLMError, match="the split has none"):
        stage.train_readouts(tiny_vlm(), binding_only, val, [("together", 2)], 2, 1e-3, anchor_weight=1.0)
