"""The GPU check kit (benchmarks/gpu/check.sh) in its CPU dry run: every part runs and reports
figures that hold whatever the machine, so the kit cannot rot between GPU loans."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    run = subprocess.run(
        ["bash", "benchmarks/gpu/check.sh", "--dry-run", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_part_ran(results):
    parts = results[0]["parts"]
    assert list(parts) == ["tests", "bench", "curve", "e2e", "train", "fp8"]
    assert all(p["ok"] for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    assert results[0]["environment"]["dry_run"] is True


def test_device_tests_and_bench(results):
    parts = results[0]["parts"]
    tests = parts["tests"]["result"]
    assert (tests["tests"], tests["failures"], tests["errors"], tests["exit_code"]) == (2, 0, 0, 0)
    bench = parts["bench"]["result"]
    assert bench["lossless_ok"] and bench["items"] == 2
    for label in ("ar", "spec-linear", "spec-quadratic", "base-ar", "hf-generate"):
        assert bench["modes"][label]["equal_to_cpu"] == bench["modes"][label]["equal_to_ar_on_device"] == 2
    assert "equal_to_cpu" not in bench["modes"]["diffusion-t0.9"]  # approximate: not compared


def test_curve_and_speedups(results):
    curve = results[0]["parts"]["curve"]["result"]["tiny"]
    assert list(curve["ms"]) == ["1", "2", "4", "8", "16", "64"] and all(v > 0 for v in curve["ms"].values())
    assert curve["expected_speedup"]["ar"] == 1.0
    e2e = results[0]["parts"]["e2e"]["result"]
    assert {f["tokens"] for f in e2e.values()} == {24}  # the forced schedules run to the token budget
    assert e2e["ar"]["passes"] == 23 and e2e["ar"]["measured_speedup"] == 1.0  # the prefill gives the first
    assert e2e["spec-linear"]["passes"] % 2 == 0  # draft + verify per step
    assert e2e["spec-quadratic"]["passes"] < e2e["spec-linear"]["passes"] < e2e["ar"]["passes"]


def test_training_layouts_agree_and_fp8_codes_match(results):
    train = results[0]["parts"]["train"]["result"]
    assert set(train) == {"full", "text", "response"}
    assert train["text"]["loss"] == pytest.approx(train["full"]["loss"], rel=1e-5)
    assert train["response"]["loss"] == pytest.approx(train["full"]["loss"], rel=1e-5)
    fp8 = results[0]["parts"]["fp8"]["result"]
    codes = fp8["codes"]["fp8-weight"]
    assert codes["layers_equal"] == codes["layers"] > 0 and codes["max_output_rel_diff"] < 1e-6
    assert "skipped" in fp8["codes"]["fp8-w8a8"]  # native W8A8 needs an FP8 GPU


def test_markdown_has_every_table(results):
    markdown = results[1]
    for heading in ("## tests", "## bench", "## curve", "## e2e", "## train", "## fp8"):
        assert heading in markdown
    assert "| spec-quadratic |" in markdown and "FAILED" not in markdown
