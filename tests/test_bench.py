"""`fast-dvlm bench` end to end on tiny models and a tiny split: figures, JSON layout, plot."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fast_dvlm.data import TASKS
from fast_dvlm.data.build import build_splits
from fast_dvlm.eval.bench import BENCH_MODES, markdown, plot, report, run_bench, write_json


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return build_splits(
        tmp_path_factory.mktemp("split"), {"train": 1, "val": 1, "test": 2}, 64, progress=False
    )["test"]


def test_bench_in_batches_answers_as_one_at_a_time(tiny_vlms, split):
    """`--batch-size 4`: the lossless modes give the same answers (tokens, passes, scores) as one
    item at a time; the seconds of a batch are shared among its answers."""
    models = {"base": tiny_vlms["qwen2_vl"], "converted": tiny_vlms["qwen2_vl"]}
    modes = tuple(m for m in BENCH_MODES if m.label in ("hf-generate", "ar", "spec-linear", "spec-quadratic"))
    one = run_bench(models, split, per_task=1, modes=modes, max_new_tokens=6, progress=False)
    four = run_bench(models, split, per_task=1, modes=modes, max_new_tokens=6, progress=False, batch_size=4)
    for label, tasks in one.items():
        for task, score in tasks.items():
            batched = four[label][task]
            assert (batched.correct, batched.tokens) == (score.correct, score.tokens), (label, task)
            assert batched.seconds > 0
    assert sum(s.nfe for s in four["ar"].values()) == sum(s.nfe for s in one["ar"].values())


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
    assert "| spec-linear |" in markdown(result)
    check_plot(result, tmp_path / "bench.png")


def check_plot(result: dict, path) -> None:
    """The plot shows the report: one marker per mode at (speed-up, accuracy), labelled with its mode,
    and per mode a short- and a long-answer bar as high as that group's tokens/NFE."""
    labels = [m.label for m in BENCH_MODES]
    figure = plot(result, path)
    left, right = figure.axes
    assert [c.get_label().split(":")[0] for c in left.collections] == labels
    for label, points in zip(labels, left.collections, strict=True):
        mode = result["modes"][label]
        assert points.get_offsets().tolist() == [[mode["speedup_vs_hf_generate"], mode["accuracy"]]]
    assert [t.get_text() for t in left.get_legend().get_texts()] == [c.get_label() for c in left.collections]
    assert [t.get_text() for t in right.get_xticklabels()] == labels
    assert [c.get_label() for c in right.containers] == ["short answers", "long answers"]
    for group, bars in zip(("short", "long"), right.containers, strict=True):
        heights = [bar.get_height() for bar in bars]
        assert heights == pytest.approx([result["groups"][group][m]["tokens_per_nfe"] for m in labels])
        assert [round(bar.get_x() + bar.get_width() / 2) for bar in bars] == list(range(len(labels)))
    with Image.open(path) as image:  # the file is that figure
        assert image.format == "PNG" and image.size == tuple(round(s * 120) for s in figure.get_size_inches())
