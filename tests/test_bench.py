"""`fast-dvlm bench` end to end on tiny models and a tiny split: figures, JSON layout, plot."""

from __future__ import annotations

import json

import pytest

from fast_dvlm.bench.procedural import BENCH_MODES, markdown, plot, report, run_bench, write_json
from fast_dvlm.data import TASKS
from fast_dvlm.data.build import build_splits


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return build_splits(
        tmp_path_factory.mktemp("split"), {"train": 1, "val": 1, "test": 2}, 64, progress=False
    )["test"]


def test_bench_report(tiny_vlms, split, tmp_path):
    models = {"base": tiny_vlms["qwen2_5_vl"], "converted": tiny_vlms["qwen2_5_vl"]}
    scores = run_bench(models, split, per_task=1, max_new_tokens=6, progress=False)
    result = report(scores, "tiny")
    assert set(result["modes"]) == {m.label for m in BENCH_MODES}
    for figures in result["modes"].values():
        assert set(figures) == {"accuracy", "tokens_per_nfe", "tokens_per_s", "speedup_vs_hf_generate"}
    assert result["hf_generate"]["speedup_vs_hf_generate"] == pytest.approx(1.0)
    assert set(result["tasks"]) == set(TASKS)
    # the same model decoded losslessly: every mode that equals greedy AR gives the same accuracy
    lossless = ("hf-generate", "base-ar", "ar", "spec-linear", "spec-quadratic")
    assert len({result["modes"][m]["accuracy"] for m in lossless}) == 1
    assert result["modes"]["ar"]["tokens_per_nfe"] == pytest.approx(1.0)
    write_json(result, tmp_path / "bench.json")
    assert json.loads((tmp_path / "bench.json").read_text())["model"] == "tiny"
    plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "| spec-linear |" in markdown(result)
