"""`fast-dvlm experiments`: convert every variant on one budget, evaluate each, write RESULTS.md.

Every piece of work writes one JSON file in the work directory and is skipped when that file is
there (and, for scores and the sweep, was made with the same scoring settings, kept in it), so an
interrupted run picks up where it stopped (a variant's training also resumes from its checkpoints).
A work directory belongs to one base and one training budget, which it records; other scoring or
sweep settings score the kept variants again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..demo.recipe import DemoRecipe, convert_config
from ..errors import FastDVLMError
from ..settings import THRESHOLD
from ..train.config import TrainConfig
from ..vlm import DiffusionVLM, load
from ..workdir import claim_workdir
from .budget import DEFAULT_PER_TASK, DEFAULT_STEPS, MULTI_TURN_PER_TASK, SWEEP_PER_TASK
from .evaluate import BASE_MODES, VARIANT_MODES, evaluate
from .multiturn import build_multi_turn, score_multi_turn
from .results import write_results
from .sweep import BLOCK_SIZES, THRESHOLDS, run_sweep
from .training import train_measured
from .variants import DIRECT, VARIANTS, Variant

CHECKPOINT_EVERY = 100  # at most ~3 minutes of a variant's training lost to an interruption
SETTINGS_FILE = "experiments.json"
TRAINING = ("steps", "batch_size", "lr", "seed")  # what the trained variants depend on: claimed


@dataclass
class ExperimentConfig:
    """The budget every variant shares (the demo conversion's batch, learning rate and seed), which
    claims the work directory, and how many test items each evaluation answers, which may change
    between runs (the scores and the sweep are made again; the trained variants are kept)."""

    steps: int = DEFAULT_STEPS
    batch_size: int = DemoRecipe.batch_size
    lr: float = DemoRecipe.convert_lr
    seed: int = DemoRecipe.seed + 1  # the demo conversion's
    per_task: int = DEFAULT_PER_TASK  # test items per task for each variant
    multi_turn_per_task: int = MULTI_TURN_PER_TASK
    sweep_per_task: int = SWEEP_PER_TASK
    thresholds: tuple[float, ...] = THRESHOLDS
    sweep_block_sizes: tuple[int, ...] = BLOCK_SIZES
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "per_task", "multi_turn_per_task", "sweep_per_task"):
            if getattr(self, name) < 1:
                raise FastDVLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_new_tokens < 1:
            raise FastDVLMError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise FastDVLMError(f"sweep thresholds must be in (0, 1], got {list(self.thresholds)}")
        if not self.sweep_block_sizes or min(self.sweep_block_sizes) < 1:
            raise FastDVLMError(f"sweep block sizes must be at least 1, got {list(self.sweep_block_sizes)}")

    @classmethod
    def capped(cls, per_task: int, **settings: Any) -> ExperimentConfig:
        """`per_task` items per task everywhere; the multi-turn set and the sweep keep their smaller
        defaults when it is larger."""
        multi, sweep = min(per_task, MULTI_TURN_PER_TASK), min(per_task, SWEEP_PER_TASK)
        return cls(per_task=per_task, multi_turn_per_task=multi, sweep_per_task=sweep, **settings)

    def scoring_settings(self, multi_turn: bool = False) -> dict:
        """What a result depends on besides its trained model (kept with it); the multi-turn set
        only for a result that scores it, so changing it re-scores nothing else."""
        settings = {"per_task": self.per_task, "max_new_tokens": self.max_new_tokens}
        return settings | ({"multi_turn_per_task": self.multi_turn_per_task} if multi_turn else {})

    def sweep_settings(self) -> dict:
        """What the inference sweep depends on besides the `direct` model (kept with the sweep)."""
        return {
            "per_task": self.sweep_per_task,
            "thresholds": list(self.thresholds),
            "block_sizes": list(self.sweep_block_sizes),
            "max_new_tokens": self.max_new_tokens,
        }

    def train_config(self) -> TrainConfig:
        """The one training setup of every variant: make-demo's conversion, for `steps` steps."""
        config = convert_config(self.steps, self.lr, self.batch_size, self.seed)
        return replace(config, checkpoint_every=CHECKPOINT_EVERY)


@dataclass
class Experiments:
    """One work directory's experiments; each method does, or reads back, one piece of work."""

    workdir: Path
    base: str
    data: Path
    config: ExperimentConfig
    progress: bool = True

    @property
    def test(self) -> Path:
        return self.data / "test.json"

    def answers(self) -> dict[str, Any]:
        return {"max_new_tokens": self.config.max_new_tokens, "progress": self.progress}

    def base_result(self, model: DiffusionVLM) -> dict:
        def score() -> dict:
            return {"bench": evaluate(model, self.test, BASE_MODES, self.config.per_task, **self.answers())}

        return once(self.workdir / "base.json", score, self.config.scoring_settings())

    def variant_result(self, variant: Variant, conversations: Path) -> dict:
        """Train (in a child process, measured), then score on the test split and, for the
        variants that take part, on the multi-turn conversations."""
        folder = self.workdir / variant.name
        train = variant.config(self.config.train_config())

        def measure() -> dict:
            return train_measured(self.base, self.data / "train.json", folder, train, self.progress)

        def score() -> dict:
            measured = once(folder / "training.json", measure)
            began = time.perf_counter()
            model = load(folder)
            bench = evaluate(model, self.test, VARIANT_MODES, self.config.per_task, **self.answers())
            out = {"change": variant.change, "recipe": variant.recipe, "seed": train.seed,
                   "training": measured, "bench": bench}  # fmt: skip
            if variant.multi_turn:
                out["multi_turn"] = score_multi_turn(
                    model, conversations, "diffusion", {"threshold": THRESHOLD}, **self.answers()
                )
            return out | {"eval_s": time.perf_counter() - began}

        return once(folder / "result.json", score, self.config.scoring_settings(variant.multi_turn))

    def sweep_result(self) -> dict:
        """The sweep of the `direct` model; made again (and only it) when its settings changed."""
        settings = self.config.sweep_settings()

        def sweep() -> dict:
            model, config = load(self.workdir / DIRECT), self.config
            points = run_sweep(model, self.test, config.sweep_per_task, config.thresholds,
                               config.sweep_block_sizes, **self.answers())  # fmt: skip
            return {"points": points}

        return once(self.workdir / "sweep.json", sweep, settings)


def run_experiments(
    workdir: str | Path,
    base: str | Path = "demo-ar",
    data_dir: str | Path | None = None,
    config: ExperimentConfig | None = None,
    results: str | Path = "docs/RESULTS.md",
    progress: bool = True,
) -> Path:
    """Run (or finish) every experiment in `workdir` and write the results page to `results`.

    `data_dir` holds `train.json` and `test.json` as `fast_dvlm.data.build` writes them; None: the
    demo recipe of the base's family, built into `workdir/data` (deterministic)."""
    config = config or ExperimentConfig()
    workdir = Path(workdir)
    base_model = load(base)  # a missing base fails here, before any work
    variants = {v.name: {"recipe": v.recipe, "seed_offset": v.seed_offset} for v in VARIANTS}
    training = {k: v for k, v in asdict(config).items() if k in TRAINING}
    settings = {"base": str(base), "data": str(data_dir), **training, "variants": variants}
    claim_workdir(workdir, settings, SETTINGS_FILE)  # scoring and sweep settings: kept with results
    data = demo_data(workdir / "data", progress) if data_dir is None else Path(data_dir)
    for split in ("train", "test"):
        if not (data / f"{split}.json").is_file():
            raise FastDVLMError(f"no {split} split in {data}: expected {split}.json")
    conversations = build_multi_turn(data, config.multi_turn_per_task, progress)
    experiments = Experiments(workdir, str(base), data, config, progress)
    base_result = experiments.base_result(base_model)
    del base_model
    results_of = {
        v.name: experiments.variant_result(v, conversations)
        for v in tqdm(VARIANTS, desc="variants", disable=not progress)
    }
    report = {
        "base": str(base),
        "settings": asdict(config) | {"train": asdict(config.train_config())},
        "data": describe_data(data, conversations),
        "machine": machine(),
        "base_result": base_result,
        "variants": results_of,
        "sweep": experiments.sweep_result(),
    }
    (workdir / "results.json").write_text(json.dumps(report, indent=1))
    return write_results(report, Path(results))


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def once(path: Path, make: Callable[[], dict], settings: dict | None = None) -> dict:
    """The JSON at `path`, made (and timed) first if it is not there or was made with other
    `settings` (kept in it); written whole or not at all."""
    settings = None if settings is None else json.loads(json.dumps(settings))  # as stored (no tuples)
    if path.exists():
        value = json.loads(path.read_text())
        if settings is None or value.get("settings") == settings:
            return value
    began = time.perf_counter()
    value = make() | ({} if settings is None else {"settings": settings})
    value["seconds"] = time.perf_counter() - began
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, indent=1))
    partial.rename(path)
    return value


def demo_data(out: Path, progress: bool = True) -> Path:
    """The demo recipe's splits, built once."""
    if not (out / "train.json").exists():
        DemoRecipe().build_data(out, progress=progress)
    return out


def describe_data(data: Path, conversations: Path) -> dict:
    def count(path: Path) -> int:
        return len(json.loads(path.read_text()))

    train = json.loads((data / "train.json").read_text())
    return {
        "folder": str(data),
        "train_records": len(train),
        "train_multi_turn": sum(len(r["conversations"]) > 2 for r in train),
        "test_records": count(data / "test.json"),
        "multi_turn_conversations": count(conversations),
    }
