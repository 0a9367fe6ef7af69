"""benchmarks/binding_study.py at toy size: it reads every spatial question's colours, writes
single-turn records in either order, and its readout trains the tower without touching the language model."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import binding_study
from fast_dvlm import DiffusionVLM
from fast_dvlm.data.build import build_splits
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("binding")
    return build_splits(out, {"train": 3, "val": 2, "test": 0}, 64, 0.5, False, ("train", "val"))


def test_every_spatial_question_names_two_colours_and_other_questions_are_refused(split):
    val = binding_study.questions(split["val"])
    assert len(val) == 4  # two records, both questions of each
    assert len(binding_study.questions(split["val"], first_only=True)) == 2
    for q in val:
        subject, reference = binding_study.colours(q.question)
        assert subject != reference and q.key in binding_study.ANSWERS and q.task == "spatial"
        names = binding_study.COLOUR_NAMES
        assert q.question.startswith(f"Where is the {names[subject]} ")
        assert f" the {names[reference]} " in q.question
    with pytest.raises(ValueError, match="not a spatial question"):
        binding_study.colours("What shape is labelled A?")


@pytest.mark.parametrize("question_first", [False, True])
def test_training_records_are_single_turn_in_the_chosen_order(split, question_first):
    path = binding_study.training_file(split["train"], question_first)
    records = json.loads(path.read_text())
    assert len(records) == 3 and all(r["task"] == "spatial" for r in records)
    for r in records:
        user, answer = r["conversations"]
        question = r["questions"][0]["question"]
        expected = f"{question}\n<image>" if question_first else f"<image>\n{question}"
        assert user == {"from": "human", "value": expected} and answer["from"] == "gpt"


def test_the_readout_trains_the_tower_and_projector_and_leaves_the_language_model(split):
    vlm = DiffusionVLM(*build_tiny_model("fast_vlm", TinySize()))
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    train = binding_study.questions(split["train"], first_only=True)
    log = binding_study.train_tower(vlm, train, binding_study.questions(split["val"]), 2, 2, seed=0)
    assert [row["step"] for row in log] == [2] and 0 <= log[0]["val"] <= 100
    changed = {n for n, p in vlm.model.named_parameters() if not torch.equal(p, before[n])}
    language = {n for n in before if any(part in n for part in ("language_model", "lm_head", "embed_tokens"))}
    assert changed and not changed & language
    assert any("projector" in n for n in changed) and any("vision_tower" in n for n in changed)
