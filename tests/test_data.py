"""Procedural tasks: determinism, disjoint splits, every scorer on right and wrong answers."""

from __future__ import annotations

import json
import random

import pytest

from fast_dvlm.data import TASKS
from fast_dvlm.data.build import build_splits, image_digest, make_example


@pytest.mark.parametrize("task", list(TASKS))
def test_generators_are_deterministic(task):
    a, b = make_example(task, "train", 7, 112), make_example(task, "train", 7, 112)
    assert image_digest(a.image) == image_digest(b.image)
    assert [(q.question, q.answer, q.key) for q in a.qas] == [(q.question, q.answer, q.key) for q in b.qas]
    c = make_example(task, "train", 8, 112)
    assert (image_digest(c.image), c.qas[0].answer) != (image_digest(a.image), a.qas[0].answer)


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_answers_score_right_and_others_wrong(task):
    scorer = TASKS[task]
    rng = random.Random(0)
    for index in range(20):
        example = TASKS[task].make(random.Random(f"score/{index}"), "test")
        for qa in example.qas:
            assert scorer.score(qa.answer, qa.key), (qa.answer, qa.key)
            assert not scorer.score("I do not know.", qa.key)
        other = rng.choice(
            [qa for e in [TASKS[task].make(random.Random(f"o/{index}"), "test")] for qa in e.qas]
        )
        if other.key != example.qas[0].key:
            assert not scorer.score(other.answer, example.qas[0].key)


def test_scorer_kinds():
    assert TASKS["chart"].score("The red bar has a value of 7.2.", "7")  # 5% tolerance (ChartQA-style)
    assert not TASKS["chart"].score("The red bar has a value of 8.", "7")
    assert TASKS["steps"].score("Step 1: 3 + 4 = 7. Final answer: 12.", "12")  # final-answer extraction
    assert not TASKS["steps"].score("Step 1: 3 + 9 = 12. Final answer: 11.", "12")
    assert TASKS["counting"].score("There are 3, so the answer is option B.", "B")  # choice letter
    assert not TASKS["counting"].score("There are 4, so the answer is option C.", "B")
    assert TASKS["spatial"].score("The red star is left of the blue star.", "left")  # closed vocabulary
    assert not TASKS["spatial"].score("It is left or right of it.", "left")  # naming two candidates is wrong


def test_splits_are_written_and_never_share_an_image(tmp_path):
    paths = build_splits(tmp_path, {"train": 12, "val": 4, "test": 4}, 112, progress=False)
    digests = {}
    for split, path in paths.items():
        records = json.loads(path.read_text())
        assert len(records) == len(TASKS) * {"train": 12, "val": 4, "test": 4}[split]
        digests[split] = {(tmp_path / r["image"]).read_bytes() for r in records}
        for r in records:
            turns = r["conversations"]
            assert turns[0]["value"].startswith("<image>\n") and turns[0]["from"] == "human"
            assert r["task"] in TASKS and r["key"]
            # every question of the scene, the asked ones first, each with a key that scores right
            first = {"question": turns[0]["value"].removeprefix("<image>\n"), "key": r["key"]}
            assert r["questions"][0] == first
            asked = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
            assert [q["question"] for q in r["questions"][: len(asked)]] == asked
            answers = [t["value"] for t in turns[1::2]]
            for q, answer in zip(r["questions"], answers, strict=False):  # the asked ones, in order
                assert TASKS[r["task"]].score(answer, q["key"])
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["val"]
    assert not digests["val"] & digests["test"]
    train = json.loads(paths["train"].read_text())
    assert any(len(r["conversations"]) >= 4 for r in train)  # some multi-turn training samples


def test_a_held_out_split_alone_equals_its_full_build(tmp_path):
    full = build_splits(tmp_path / "full", {"train": 3, "val": 2, "test": 2}, 64, progress=False)
    alone = build_splits(tmp_path / "alone", {"test": 2}, 64, progress=False, splits=("test",))
    assert set(alone) == {"test"}
    assert json.loads(full["test"].read_text()) == json.loads(alone["test"].read_text())
