"""benchmarks/stage0_study.py at toy size: it trains, evaluates the chosen tasks only, records its
settings with every row, and a curriculum run starts from the saved tower."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from benchmarks import stage0_study


def run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["stage0_study.py", *args])
    stage0_study.main()


def test_rows_hold_the_chosen_tasks_and_a_curriculum_starts_from_the_saved_tower(tmp_path, monkeypatch):
    common = ["--side", "128", "--per-task", "2", "--steps", "2", "--every", "1", "--batch-size", "2",
              "--data", str(tmp_path / "data"), "--out", str(tmp_path / "rows.jsonl")]  # fmt: skip
    run(monkeypatch, "--name", "first", "--tasks", "sign,receipt", "--save", str(tmp_path / "t.pt"),
        "--focus-steps", "1", "--focus-order", "receipt,chart", *common)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"sign", "receipt"} <= set(r) and "chart" not in r for r in rows)
    assert rows[0]["settings"]["tasks"] == "sign,receipt" and rows[0]["settings"]["side"] == 128
    saved = torch.load(tmp_path / "t.pt")

    # at a vanishing lr, the curriculum's next stage ends where the saved tower was
    run(monkeypatch, "--name", "then", "--tasks", "chart", "--init", str(tmp_path / "t.pt"), "--steps", "1",
        "--lr", "1e-12", "--save", str(tmp_path / "t2.pt"), *common[:4], *common[6:])  # fmt: skip
    last = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[-1])
    assert last["settings"]["init"] == str(tmp_path / "t.pt") and set(last) >= {"chart", "mean"}
    then = torch.load(tmp_path / "t2.pt")
    weights = [k for k in saved["model"] if "running_" not in k and "num_batches" not in k]  # not BN stats
    assert all(torch.allclose(then["model"][k], saved["model"][k], atol=1e-6) for k in weights)


def test_layers_deepen_the_stages_of_this_run_only(tmp_path, monkeypatch):
    from fast_dvlm.models import fast_vlm

    demo_args = fast_vlm.tiny_fastvit_args
    common = ["--side", "128", "--per-task", "2", "--steps", "1", "--every", "1", "--batch-size", "2",
              "--tasks", "sign", "--data", str(tmp_path / "data"),
              "--out", str(tmp_path / "rows.jsonl")]  # fmt: skip
    run(monkeypatch, "--name", "deep", "--layers", "1,1,1,2,3", "--save", str(tmp_path / "t.pt"), *common)
    blocks = {m.groups() for k in torch.load(tmp_path / "t.pt")["model"]
              if (m := re.search(r"stages\.(\d)\.blocks\.(\d+)\.", k))}  # (stage, block)  # fmt: skip
    assert {("3", "1"), ("4", "1"), ("4", "2")} <= blocks
    assert ("4", "3") not in blocks and ("2", "1") not in blocks
    assert fast_vlm.tiny_fastvit_args is demo_args  # the demo's own tower is untouched
    with pytest.raises(SystemExit, match="five block counts"):
        run(monkeypatch, "--name", "bad", "--layers", "1,2", *common)
