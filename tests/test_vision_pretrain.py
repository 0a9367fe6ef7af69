"""Stage 0 of the demo recipe: the tower learns under a visual-question head that answers every
question of each scene from one pass of its image."""

from __future__ import annotations

import json

import pytest
import torch

from fast_dvlm import DiffusionVLM
from fast_dvlm.data.build import build_splits
from fast_dvlm.demo.vision_pretrain import VisionPretrainer, pretrain_vision, read_scenes
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


def test_scenes_list_every_question_and_old_splits_still_read(tmp_path):
    paths = build_splits(tmp_path, {"train": 2, "val": 1, "test": 1}, 56, progress=False)
    scenes = read_scenes(paths["train"])
    records = json.loads(paths["train"].read_text())
    assert [len(s.questions) for s in scenes] == [len(r["questions"]) for r in records]
    assert max(len(s.questions) for s in scenes) == 3 and all(s.image.is_file() for s in scenes)
    for r in records:
        del r["questions"]  # a split written before the field existed: its first question only
    paths["train"].write_text(json.dumps(records))
    old = read_scenes(paths["train"])
    assert [s.questions for s in old] == [s.questions[:1] for s in scenes]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "fast_vlm"])
def test_the_head_answers_each_question_and_training_moves_only_the_vision_side(tmp_path, family):
    paths = build_splits(tmp_path, {"train": 3, "val": 1, "test": 1}, 56, progress=False)
    vlm = DiffusionVLM(*build_tiny_model(family, TinySize(image_size=56)))
    scenes = read_scenes(paths["train"])
    trainer = VisionPretrainer(vlm, scenes)
    logits = trainer.logits(scenes[:4])
    assert logits.shape == (sum(len(s.questions) for s in scenes[:4]), len(trainer.labels))
    assert trainer.targets(scenes[:4]).shape == logits.shape[:1]

    parts = vlm.model.model
    vision = {n: p.detach().clone() for n, p in parts.named_parameters() if not n.startswith("language")}
    language = {n: p.detach().clone() for n, p in parts.language_model.named_parameters()}
    report = pretrain_vision(vlm, paths["train"], paths["val"], 3, 4, 1e-3, progress=False)
    assert set(report["val_accuracy"]) == {s.task for s in read_scenes(paths["val"])}
    moved = [n for n, p in parts.named_parameters() if n in vision and not torch.equal(p, vision[n])]
    tower = "visual." if family == "qwen2_5_vl" else "vision_tower."
    assert any(n.startswith(tower) for n in moved)
    assert all(torch.equal(p, language[n]) for n, p in parts.language_model.named_parameters())


def test_the_loss_weighs_each_task_alike_and_focal_spares_what_is_answered_well(tmp_path):
    paths = build_splits(tmp_path, {"train": 2, "val": 1, "test": 1}, 56, progress=False)
    vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize(image_size=56)))
    scenes = read_scenes(paths["train"])
    trainer = VisionPretrainer(vlm, scenes)
    with torch.no_grad():
        logits, targets = trainer.logits(scenes), trainer.targets(scenes)
        questions = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        tasks = [s.task for s in scenes for _ in s.questions]
        by_task = {t: questions[[k for k, u in enumerate(tasks) if u == t]].mean() for t in set(tasks)}
        assert torch.allclose(trainer.loss(scenes, 0.0), torch.stack(list(by_task.values())).mean())
        p = torch.exp(-questions)
        focal = questions * (1 - p) ** 2
        by_task = {t: focal[[k for k, u in enumerate(tasks) if u == t]].mean() for t in set(tasks)}
        assert torch.allclose(trainer.loss(scenes, 2.0), torch.stack(list(by_task.values())).mean())
        # a focused task counts as much as all the others together
        others = torch.stack([v for t, v in by_task.items() if t != "sign"]).mean()
        assert torch.allclose(trainer.loss(scenes, 2.0, focus="sign"), (by_task["sign"] + others) / 2)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    paths = build_splits(tmp_path, {"train": 3, "val": 1, "test": 1}, 56, progress=False)

    def run(checkpoint=None):
        vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize(image_size=56)))
        pretrain_vision(vlm, paths["train"], paths["val"], 4, 4, 1e-3, checkpoint=checkpoint,
                        checkpoint_every=2, progress=False)  # fmt: skip
        return vlm.model.state_dict()

    whole = run()
    loss, calls = VisionPretrainer.loss, []

    def crash_on_third_step(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(self, *args)

    monkeypatch.setattr(VisionPretrainer, "loss", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stage0.pt")
    monkeypatch.setattr(VisionPretrainer, "loss", loss)
    resumed = run(tmp_path / "stage0.pt")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
