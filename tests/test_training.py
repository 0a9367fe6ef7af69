"""The trainer on real tiny models: output checkpoints, resume after a kill, 1 vs 2 processes, learning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

import fast_dvlm
from fast_dvlm import DiffusionVLM, FastDVLMError
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.train.config import TrainConfig
from fast_dvlm.train.data import ConversationDataset
from fast_dvlm.train.trainer import convert

from .shapes_data import write_shapes_dataset


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def cli(*args: str, launcher: list[str] | None = None) -> list[str]:
    return (launcher or [sys.executable, "-m"]) + ["fast_dvlm.cli", *args]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_vlms):
    root = tmp_path_factory.mktemp("train")
    data = write_shapes_dataset(root / "data", 48)
    for name in ("qwen2_5_vl", "fast_vlm"):
        tiny_vlms[name].save_pretrained(root / name)
    return root, data


def test_convert_writes_a_checkpoint_both_loaders_open(workdir):
    root, data = workdir
    for family in ("qwen2_5_vl", "fast_vlm"):
        out = root / f"converted-{family}"
        convert(root / family, data, out, TrainConfig(steps=3, batch_size=2, lr=1e-3), progress=False)
        vlm = fast_dvlm.load(out)
        assert vlm.settings.block_size == 32
        assert vlm.settings.recipe["recipe"]["block_sizes"] == [2, 4, 8, 16, 32]
        assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == family
        assert [r["step"] for r in read_log(out)] == [1, 2, 3]
        answer = vlm.generate("What colour is the shape?", [data.parent / "img0.png"], "spec-linear", 8)
        assert (
            answer.token_ids
            == vlm.generate("What colour is the shape?", [data.parent / "img0.png"], "ar", 8).token_ids
        )


def test_block_size_anneals_and_is_logged(workdir):
    root, data = workdir
    out = root / "anneal"
    convert(root / "qwen2_5_vl", data, out, TrainConfig(steps=10, batch_size=2), progress=False)
    sizes = [r["block_size"] for r in read_log(out)]
    assert sizes == sorted(sizes) and sizes[0] == 2 and sizes[-1] == 32


def test_two_stage_trains_text_only_first(workdir):
    root, data = workdir
    out = root / "two-stage"
    config = TrainConfig(steps=4, batch_size=2, recipe={"two_stage": True, "stage1_fraction": 0.5})
    convert(root / "qwen2_5_vl", data, out, config, progress=False)
    assert [r["stage"] for r in read_log(out)] == [1, 1, 2, 2]


def test_resume_after_kill_reproduces_the_losses(workdir):
    root, data = workdir
    args = ["convert", "--base", str(root / "qwen2_5_vl"), "--data", str(data), "--steps", "30",
            "--batch-size", "2", "--lr", "1e-3"]  # fmt: skip
    config = root / "ckpt.yaml"
    config.write_text("checkpoint_every: 10\n")
    whole, killed = root / "whole", root / "killed"
    subprocess.run(cli(*args, "--out", str(whole), "--config", str(config)), check=True, capture_output=True)
    run = subprocess.Popen(
        cli(*args, "--out", str(killed), "--config", str(config)), stderr=subprocess.DEVNULL
    )
    log = killed / "train_log.jsonl"
    while run.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= 15):
        time.sleep(0.02)
    run.kill()
    run.wait()
    assert len(read_log(killed)) < 30 and (killed / "checkpoints" / "step-10").is_dir()
    subprocess.run(cli(*args, "--out", str(killed), "--config", str(config)), check=True, capture_output=True)
    resumed, reference = read_log(killed), read_log(whole)
    assert [r["step"] for r in resumed] == list(range(1, 31))
    for a, b in zip(resumed, reference, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]


def test_two_processes_match_one(workdir):
    root, data = workdir
    args = ["convert", "--base", str(root / "qwen2_5_vl"), "--data", str(data), "--steps", "4",
            "--batch-size", "4", "--lr", "1e-3"]  # fmt: skip
    one, two = root / "one-process", root / "two-processes"
    subprocess.run(cli(*args, "--out", str(one)), check=True, capture_output=True)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        cli(*args, "--out", str(two), launcher=launcher), capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for a, b in zip(read_log(one), read_log(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]


def test_diffusion_loss_falls(workdir):
    root, data = workdir
    out = root / "learning"
    config = TrainConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=10, recipe={"block_sizes": [4]})
    convert(root / "qwen2_5_vl", data, out, config, progress=False)
    losses = [r["diffusion_loss"] for r in read_log(out)]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.5 * first, (first, last)


def test_broken_records_are_skipped_and_counted(tmp_path, tiny_vlms):
    vlm = tiny_vlms["qwen2_5_vl"]
    good = write_shapes_dataset(tmp_path, 2)
    records = json.loads(good.read_text())
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not an image")
    turn = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    lines = [json.dumps(r) for r in records] + [
        json.dumps({"image": "nowhere.png", "conversations": turn}),
        json.dumps({"image": "corrupt.png", "conversations": turn}),
        json.dumps({"conversations": []}),
        json.dumps({"conversations": turn[::-1]}),
        json.dumps({"conversations": [*turn, {"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]}),
        "{not json",
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines))
    dataset = ConversationDataset(path, vlm.processor, vlm.family, progress=False)
    assert len(dataset) == 2
    assert dict(dataset.skipped) == {
        "missing image file": 1,
        "corrupt image": 1,
        "empty conversation": 1,
        "turns do not alternate human/gpt": 1,
        "empty message": 1,
        "invalid JSON on line 8": 1,
    }
    assert "skipped 6" in dataset.report()


def test_bad_training_config_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 10\n")
    with pytest.raises(FastDVLMError, match="unknown config setting.*stepz"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(FastDVLMError, match="unknown recipe setting"):
        TrainConfig(recipe={"alpha": 1})
    with pytest.raises(FastDVLMError, match="not both 0"):
        TrainConfig(recipe={"alpha_diffusion": 0, "beta_ar": 0})
    with pytest.raises(FastDVLMError, match="length_split must be at least 1, got 0"):
        TrainConfig(length_split=0)
    with pytest.raises(FastDVLMError, match="divisible"):
        from fast_dvlm.train.trainer import Schedule

        Schedule(TrainConfig(batch_size=3), 10, rank=0, world=2)


def test_gradient_checkpointing_gives_the_same_loss(workdir):
    root, data = workdir
    logs = []
    for checkpointing in (False, True):
        out = root / f"checkpointing-{checkpointing}"
        config = TrainConfig(steps=2, batch_size=2, lr=1e-3, gradient_checkpointing=checkpointing)
        convert(root / "qwen2_5_vl", data, out, config, progress=False)
        logs.append([r["loss"] for r in read_log(out)])
    assert logs[0] == pytest.approx(logs[1], rel=1e-5)


def test_length_split_trains_like_the_whole_batch(workdir):
    """Chunks of similar length, each loss weighted by its share of the samples: the same losses
    and weights as the whole micro-batch at once, with grad accumulation too; 7 samples make
    uneven chunks (2, 3, 2), so equal weights would be caught. (The tiny Qwen2.5-VL has no batch
    norm, whose statistics would come from each chunk.)"""
    root, data = workdir
    runs = {}
    for split in (1, 3):
        out = root / f"length-split-{split}"
        config = TrainConfig(steps=2, batch_size=7, grad_accum=2, lr=1e-3, length_split=split)
        convert(root / "qwen2_5_vl", data, out, config, progress=False)
        runs[split] = read_log(out), fast_dvlm.load(out).model.state_dict()
    (whole, whole_weights), (chunked, chunked_weights) = runs[1], runs[3]
    for key in ("loss", "ar_loss", "diffusion_loss"):
        assert [r[key] for r in chunked] == pytest.approx([r[key] for r in whole], rel=1e-5)
    # AdamW turns float-order noise in near-zero gradients into ~1e-5 differences; updates are ~1e-3
    assert all(torch.allclose(whole_weights[n], chunked_weights[n], atol=1e-4) for n in whole_weights)


def test_length_chunks_sort_by_length_and_cover_every_sample():
    from fast_dvlm.train.trainer import length_chunks

    class Fake:
        def __init__(self, n: int) -> None:
            self.input_ids = torch.zeros(n)

    samples = [Fake(n) for n in (50, 10, 40, 20, 30)]
    chunks = length_chunks(samples, 2)
    assert [chunk for chunk, _ in chunks] == [[1, 3], [4, 2, 0]]
    assert [last for _, last in chunks] == [False, True]
    assert [chunk for chunk, _ in length_chunks(samples, 9)] == [[1], [3], [4], [2], [0]]  # at most one each
    assert length_chunks(samples, 1) == [([1, 3, 4, 2, 0], True)]


def test_length_split_fills_rows_with_real_tokens(workdir, tiny_vlms):
    from benchmarks.train_padding import fill

    root, data = workdir
    vlm = tiny_vlms["qwen2_5_vl"]
    dataset = ConversationDataset(data, vlm.processor, vlm.family, progress=False)
    whole, halves = (fill(TrainConfig(steps=6, batch_size=8, length_split=k), dataset) for k in (1, 2))
    assert 0 < whole < halves <= 1.0


def batch_fill(schedule, lengths: list[int], steps: int) -> float:
    """Share of a padded batch's tokens that are real, over `steps` batches."""
    batches = [[lengths[i] for i in schedule.indices(step, 0)] for step in range(steps)]
    return sum(sum(b) for b in batches) / sum(max(b) * len(b) for b in batches)


def test_grouping_by_length_cuts_padding_and_keeps_every_sample_once_per_epoch():
    from fast_dvlm.train.trainer import Schedule

    lengths = [int(x) for x in torch.randint(20, 120, (640,), generator=torch.Generator().manual_seed(0))]
    config = TrainConfig(batch_size=8, seed=3, group_by_length=True)
    grouped, plain = Schedule(config, 640, 0, 1, lengths), Schedule(config, 640, 0, 1)
    epoch = [i for step in range(80) for i in grouped.indices(step, 0)]
    assert sorted(epoch) == list(range(640))
    assert epoch != [i for step in range(80) for i in plain.indices(step, 0)]
    assert batch_fill(grouped, lengths, 80) > 0.9 > 0.75 > batch_fill(plain, lengths, 80)
    # a different epoch, a different order; two processes share out the one-process batches
    assert [grouped.indices(s, 0) for s in range(80, 90)] != [grouped.indices(s, 0) for s in range(10)]
    halves = [Schedule(config, 640, rank, 2, lengths) for rank in (0, 1)]
    for step in (0, 37, 123):
        assert halves[0].indices(step, 0) + halves[1].indices(step, 0) == grouped.indices(step, 0)


def test_grouped_training_logs_what_it_trained(workdir, tiny_vlms):
    """The log of a grouped run equals a plain re-run of the same training by hand: the same
    length-grouped batches (not the plain order's), the same per-sample noise, the block size of
    the annealing formula, the cosine learning rate, and AdamW updates between the steps."""
    from fast_dvlm.conversion.objective import conversion_forward
    from fast_dvlm.train.trainer import Schedule, sample_seed

    root, data = workdir
    vlm = tiny_vlms["qwen2_5_vl"]
    dataset = ConversationDataset(data, vlm.processor, vlm.family, progress=False)
    lengths = dataset.text_lengths()
    assert len(lengths) == len(dataset) and min(lengths) > 0
    out = root / "grouped"
    config = TrainConfig(steps=3, batch_size=4, lr=1e-3, group_by_length=True)
    convert(root / "qwen2_5_vl", data, out, config, progress=False)
    log = read_log(out)

    grouped, plain = Schedule(config, len(dataset), 0, 1, lengths), Schedule(config, len(dataset), 0, 1)
    batches = [grouped.indices(step, 0) for step in range(config.steps)]
    assert batches != [plain.indices(step, 0) for step in range(config.steps)]
    sizes = config.recipe.block_sizes  # (2, 4, 8, 16, 32): floor(sqrt(step / steps) * 5) picks 2, 8, 32
    expected_sizes = [sizes[min(math.floor(math.sqrt(s / config.steps) * len(sizes)), len(sizes) - 1)]
                      for s in range(config.steps)]  # fmt: skip
    assert [r["block_size"] for r in log] == expected_sizes == [2, 8, 32]
    cosine = [config.lr * 0.5 * (1 + math.cos(math.pi * s / config.steps)) for s in range(config.steps)]
    assert [r["lr"] for r in log] == pytest.approx(cosine, rel=1e-9)

    base = fast_dvlm.load(root / "qwen2_5_vl")  # the same base the trainer loaded, trained by hand
    model = base.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    for step, (indices, record) in enumerate(zip(batches, log, strict=True)):
        samples = [dataset[i] for i in indices]
        seeds = [sample_seed(config.seed, step, i) for i in indices]
        parts, _, _ = conversion_forward(
            model,
            base.family,
            samples,
            config.recipe,
            expected_sizes[step],
            seeds,
            base.settings.mask_token_id,
        )
        logged = (record["loss"], record["diffusion_loss"], record["ar_loss"])
        assert logged == pytest.approx(
            (parts.total.item(), parts.diffusion.item(), parts.ar.item()), rel=1e-5
        )
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = cosine[step]
        optimizer.step()
        optimizer.zero_grad()
    assert len({r["loss"] for r in log}) == config.steps


def test_freeze_vision_trains_the_language_model_only(workdir):
    root, data = workdir
    out = root / "frozen-vision"
    config = TrainConfig(steps=2, batch_size=2, lr=1e-2, freeze_vision=True)
    convert(root / "fast_vlm", data, out, config, progress=False)
    before, after = (fast_dvlm.load(path).model.state_dict() for path in (root / "fast_vlm", out))
    vision = [n for n in before if n.startswith("model.") and not n.startswith("model.language_model.")]
    assert any("running_mean" in n for n in vision)  # the FastViT tower's batch norms
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    text = [n for n in before if n.startswith("model.language_model.")]
    assert text and any(not torch.equal(before[n], after[n]) for n in text)


def test_freeze_vision_on_a_text_only_model_is_refused(workdir, tmp_path):
    root, data = workdir
    text_only = DiffusionVLM(*build_tiny_model("qwen2", TinySize()))
    assert text_only.vision_modules() == [] and text_only.vision_parameters() == []
    text_only.save_pretrained(tmp_path / "qwen2")
    with pytest.raises(FastDVLMError, match="text-only model"):
        convert(
            tmp_path / "qwen2",
            data,
            tmp_path / "out",
            TrainConfig(steps=1, freeze_vision=True),
            progress=False,
        )
