"""`fast-dvlm experiments` end to end at toy scale: every variant converted from one base on one budget,
scored, written up; a rerun skips what is done; the verdicts follow their rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from PIL import Image

from fast_dvlm.cli import main
from fast_dvlm.data.build import build_splits, image_digest
from fast_dvlm.experiments import runner
from fast_dvlm.experiments.agreement import AGREES, DISAGREES, NOISE, Noise, sampling_error, verdict
from fast_dvlm.experiments.budget import DEFAULT_PER_TASK, DEFAULT_STEPS, SWEEP_PER_TASK
from fast_dvlm.experiments.results import default_statement
from fast_dvlm.experiments.runner import ExperimentConfig
from fast_dvlm.experiments.sweep import dominates
from fast_dvlm.experiments.variants import DIRECT, NO_ANNEALING, REPEAT, TWO_STAGE, VARIANTS
from fast_dvlm.train.config import TrainConfig

SIDE = 56
TOY = ["--steps", "2", "--per-task", "1", "--batch-size", "2", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_vlms) -> tuple[Path, Path, Path]:
    """A toy base, toy splits in the work directory (so the demo's are not built), one full run."""
    root = tmp_path_factory.mktemp("experiments")
    tiny_vlms["qwen2_5_vl"].save_pretrained(root / "base")
    work, results = root / "work", root / "docs" / "RESULTS.md"
    build_splits(work / "data", {"train": 2, "val": 1, "test": 1}, SIDE, multi_turn=1.0, progress=False)
    args = ["experiments", "--workdir", str(work), "--base", str(root / "base"), "--results", str(results)]
    assert main(args + TOY) == 0
    return work, results, root / "base"


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_every_variant_is_converted_scored_and_written_up(finished):
    work, results, _ = finished
    page = results.read_text()
    for variant in VARIANTS:
        assert f"| `{variant.name}` | {variant.change} |" in page
    assert (results.parent / "results_variants.png").stat().st_size > 0
    assert (results.parent / "results_sweep.png").stat().st_size > 0
    assert "## Headline: the paper's claims against ours" in page and "73.3 vs AR 74.0" in page
    report = json.loads((work / "results.json").read_text())
    assert len(report["sweep"]["points"]) == 30  # the default grid: 6 thresholds x 5 block sizes
    for variant in VARIANTS:
        result = report["variants"][variant.name]
        assert set(result["bench"]) == {"ar", "diffusion-t0.9", "spec-linear"}
        assert all(c["total"] == 1 for c in result["bench"]["ar"]["tasks"].values())
        assert result["training"]["peak_rss_mb"] > result["training"]["start_rss_mb"] > 0
        assert ("multi_turn" in result) == variant.multi_turn
        assert [r["step"] for r in read_log(work / variant.name)] == [1, 2]


def test_variants_differ_only_in_their_switches(finished):
    work, _, base = finished
    saved = {
        v.name: json.loads((work / v.name / "config.json").read_text())["fast_dvlm"]["recipe"]
        for v in VARIANTS
    }
    shared = ExperimentConfig(steps=2, batch_size=2, per_task=1).train_config()
    for variant in VARIANTS:
        expected = variant.config(shared)
        assert saved[variant.name]["recipe"] == json.loads(json.dumps(asdict(expected.recipe)))
        assert saved[variant.name]["seed"] == expected.seed and saved[variant.name]["base"] == str(base)
        for name in ("steps", "batch_size", "lr", "warmup_steps", "weight_decay"):
            assert saved[variant.name][name] == saved[DIRECT][name]
    assert len({json.dumps(r, sort_keys=True) for r in saved.values()}) == len(VARIANTS)
    assert saved[REPEAT]["seed"] == saved[DIRECT]["seed"] + 1
    # and the switches acted: two stages, no annealing, annealing
    assert [r["stage"] for r in read_log(work / TWO_STAGE)] == [1, 2]
    assert [r["block_size"] for r in read_log(work / NO_ANNEALING)] == [32, 32]
    assert [r["block_size"] for r in read_log(work / DIRECT)] == [2, 16]


def test_the_multi_turn_set_asks_several_questions_about_unseen_images(finished):
    work, _, _ = finished
    data = work / "data"
    conversations = json.loads((data / "multiturn-1.json").read_text())
    assert conversations and all(len(c["conversations"]) in (4, 6) for c in conversations)
    trained = {
        image_digest(Image.open(data / r["image"])) for r in json.loads((data / "train.json").read_text())
    }
    assert not trained & {image_digest(Image.open(data / c["image"])) for c in conversations}


def test_a_rerun_skips_what_is_done_and_redoes_what_is_missing(finished, monkeypatch):
    work, results, base = finished
    done = sorted(work.glob("*/*.json")) + sorted(work.glob("*/model.safetensors")) + [work / "sweep.json"]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    calls: list[str] = []

    def no_training(*args, **kwargs):
        raise AssertionError("a finished variant was trained again")

    def counted(model, split, modes, *args, **kwargs):
        calls.append(modes[0].model)
        return scored(model, split, modes, *args, **kwargs)

    scored = runner.evaluate
    monkeypatch.setattr(runner, "train_measured", no_training)
    monkeypatch.setattr(runner, "evaluate", counted)
    args = ["experiments", "--workdir", str(work), "--base", str(base), "--results", str(results)]
    assert main(args + TOY) == 0
    assert calls == [] and all(p.stat().st_mtime_ns == stamps[p] for p in done)

    (work / NO_ANNEALING / "result.json").unlink()  # as if stopped after its training
    assert main(args + TOY) == 0
    assert calls == ["converted"]  # scored again, not trained again
    assert (work / NO_ANNEALING / "training.json").stat().st_mtime_ns == stamps[
        work / NO_ANNEALING / "training.json"
    ]


def test_other_scoring_settings_score_again_without_training(finished, tmp_path, monkeypatch):
    work, results, base = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    monkeypatch.setattr(runner, "train_measured", lambda *a, **k: pytest.fail("a variant was retrained"))
    kept = {p: p.stat().st_mtime_ns for p in copy.glob("*/training.json")}
    args = ["experiments", "--workdir", str(copy), "--base", str(base), "--results", str(tmp_path / "R.md")]
    assert main(args + ["--steps", "2", "--per-task", "2", "--batch-size", "2", "--max-new-tokens", "3"]) == 0
    for variant in VARIANTS:
        result = json.loads((copy / variant.name / "result.json").read_text())
        multi = {"multi_turn_per_task": 2} if variant.multi_turn else {}
        assert result["settings"] == {"per_task": 2, "max_new_tokens": 3} | multi
    assert json.loads((copy / "base.json").read_text())["settings"]["per_task"] == 2
    assert json.loads((copy / "sweep.json").read_text())["settings"]["max_new_tokens"] == 3
    assert kept and all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_a_larger_multi_turn_set_rescores_only_the_variants_it_scores(finished, tmp_path, monkeypatch):
    work, _, base = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    monkeypatch.setattr(runner, "train_measured", lambda *a, **k: pytest.fail("a variant was retrained"))
    kept = {v.name: (copy / v.name / "result.json").stat().st_mtime_ns for v in VARIANTS}
    kept_base = (copy / "base.json").stat().st_mtime_ns
    toy = ExperimentConfig.capped(1, steps=2, batch_size=2, max_new_tokens=2)
    runner.run_experiments(copy, base, config=replace(toy, multi_turn_per_task=2), results=tmp_path / "R.md",
                           progress=False)  # fmt: skip
    stamps = {v.name: (copy / v.name / "result.json").stat().st_mtime_ns for v in VARIANTS}
    rescored = {name for name, stamp in stamps.items() if stamp != kept[name]}
    assert rescored == {v.name for v in VARIANTS if v.multi_turn}
    assert (copy / "base.json").stat().st_mtime_ns == kept_base


def test_a_changed_sweep_reruns_the_sweep_alone(finished, tmp_path, monkeypatch):
    work, results, base = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    monkeypatch.setattr(runner, "train_measured", lambda *a, **k: pytest.fail("a variant was retrained"))
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: pytest.fail("a variant was scored again"))
    toy = ExperimentConfig.capped(1, steps=2, batch_size=2, max_new_tokens=2)
    narrower = replace(toy, thresholds=(0.9,), sweep_block_sizes=(4, 8))
    runner.run_experiments(copy, base, config=narrower, results=tmp_path / "RESULTS.md", progress=False)
    sweep = json.loads((copy / "sweep.json").read_text())
    assert [(p["threshold"], p["block_size"]) for p in sweep["points"]] == [(0.9, 4), (0.9, 8)]
    assert sweep["settings"] == narrower.sweep_settings()
    assert "| 0.9 | 8 |" in (tmp_path / "RESULTS.md").read_text()


def test_a_workdir_resumed_with_other_settings_is_refused(finished, capsys):
    work, results, base = finished
    args = ["experiments", "--workdir", str(work), "--base", str(base), "--results", str(results)]
    assert main(args + ["--steps", "3", "--per-task", "1", "--batch-size", "2", "--max-new-tokens", "2"]) == 2
    assert "steps differ" in capsys.readouterr().err


def test_bad_input_is_one_error_line(tmp_path, capsys):
    missing = ["experiments", "--workdir", str(tmp_path / "w"), "--base", str(tmp_path / "nowhere")]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fast-dvlm: error:") and "nowhere" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()  # nothing started
    assert main(["experiments", "--workdir", str(tmp_path / "w"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fast-dvlm: error: steps must be at least 1, got 0"


def test_the_default_budget_is_the_documented_one():
    config = ExperimentConfig()
    assert (config.steps, config.per_task) == (DEFAULT_STEPS, DEFAULT_PER_TASK) == (400, 60)
    train = config.train_config()
    assert (train.batch_size, train.lr, train.seed) == (32, 5e-4, 1)  # the demo conversion's
    assert ExperimentConfig.capped(2).sweep_per_task == 2
    assert ExperimentConfig.capped(100).sweep_per_task == SWEEP_PER_TASK == 20


def test_a_variant_changes_a_copy_of_the_shared_settings():
    shared = TrainConfig(steps=5, seed=3)
    two_stage = next(v for v in VARIANTS if v.name == TWO_STAGE).config(shared)
    repeat = next(v for v in VARIANTS if v.name == REPEAT).config(shared)
    assert two_stage.recipe.two_stage and not shared.recipe.two_stage
    assert repeat.seed == 4 and repeat.recipe == shared.recipe and shared.seed == 3


def test_verdicts_weigh_the_effect_against_the_noise():
    noise = Noise(seed_difference=2.0, sampling=1.0)
    assert verdict(-5.0, -1, noise) == AGREES
    assert verdict(-1.5, -1, noise) == NOISE
    assert verdict(+5.0, -1, noise) == DISAGREES
    assert verdict(+5.0, +1, Noise(0.0, 6.0)) == NOISE  # the sampling error is a floor
    # one task, 2 of 4 right in each run: 2 * sqrt(2 * 0.25 / 4) = 0.707
    counts = {"a": {"correct": 2, "total": 4}}
    assert sampling_error([counts, counts], ["a"]) == pytest.approx(70.71, abs=0.01)


def test_the_frontier_keeps_settings_nothing_beats():
    fast = {"accuracy": 40.0, "tokens_per_s": 300.0}
    slow_better = {"accuracy": 50.0, "tokens_per_s": 200.0}
    beaten = {"accuracy": 40.0, "tokens_per_s": 250.0}
    assert dominates(fast, beaten) and not dominates(fast, slow_better) and not dominates(slow_better, fast)
    assert not dominates(fast, dict(fast))


def sweep_point(threshold: float, block: int, correct: int, speed: float) -> dict:
    tasks = {"chart": {"correct": correct, "total": 20}, "sign": {"correct": correct, "total": 20}}
    return {"threshold": threshold, "block_size": block, "accuracy": 100 * correct / 20,
            "tokens_per_s": speed, "frontier": False, "tasks": tasks}  # fmt: skip


def test_the_sweep_names_the_fastest_setting_within_the_noise():
    # 7 vs 6 of 20 items is within the noise; 2 of 20 is not
    points = [sweep_point(0.9, 32, 7, 300.0), sweep_point(0.3, 16, 6, 360.0), sweep_point(0.3, 64, 2, 500.0)]
    statement = default_statement(points)
    assert "as accurate as the best setting" in statement
    assert "tau 0.3, block 16: 30.0%, 360 tokens/s, 1.20x" in statement and "block 64" not in statement
    assert default_statement([sweep_point(0.9, 32, 7, 400.0), points[1]]).endswith("the sweep supports them.")
    assert "block 16 is more accurate" in default_statement([sweep_point(0.9, 32, 1, 300.0), points[1]])


ORPHAN = """
import os, sys, time
from fast_dvlm.experiments.training import exit_with, spawn

def orphan(pid_file, lifeline):
    exit_with(lifeline)
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(60)

if __name__ == "__main__":
    child, keep_alive = spawn(orphan, sys.argv[1])
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie nobody reaps (a container's init may not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_variant_child_stops_when_the_run_is_killed(tmp_path):
    """A killed run (not Ctrl-C, which reaches the whole process group) must not leave its variant's
    training running on, unseen, beside the rerun that resumes it."""
    script, pid_file = tmp_path / "run.py", tmp_path / "child.pid"
    script.write_text(ORPHAN)
    run = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and run.poll() is None, "the child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert alive(child)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child trained on after its run was killed"
    finally:
        run.kill()
