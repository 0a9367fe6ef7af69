"""The TTFT benchmark: fusing FastViTHD keeps its outputs, token counts follow the strides, the
figures add up on tiny models, and bad resolutions fail with one clear error before any building."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fast_dvlm.bench.ttft import (
    FastViTHD,
    QwenViT,
    TTFTSizes,
    answer_ms,
    build_fastvlm,
    build_vit,
    fuse_fastvit,
    markdown,
    measured_tokens_per_pass,
    run_ttft,
    unfused_modules,
)
from fast_dvlm.cli import main
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.fast_vlm import tiny_fastvit_args

TINY = TTFTSizes(
    text=dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=512,
    ),
    fastvit=tiny_fastvit_args(TinySize()),
    vit=dict(
        depth=2, hidden_size=32, num_heads=2, intermediate_size=64, window_size=56, fullatt_block_indexes=[1]
    ),
)
REAL_FASTVIT = TTFTSizes(text=TINY.text)  # real-size FastViTHD in front of a tiny language model


@torch.no_grad()
def check_fusing_keeps_outputs(sizes: TTFTSizes, side: int) -> None:
    model = build_fastvlm(sizes, fuse=False)
    fused = copy.deepcopy(model)
    fuse_fastvit(fused)
    assert unfused_modules(model) and not unfused_modules(fused)
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))  # normalised pixels
    before = model.model.vision_tower(images).last_hidden_state  # [2, C, side / 64, side / 64]
    after = fused.model.vision_tower(images).last_hidden_state
    scale = before.abs().max()
    assert (before[0] - before[1]).abs().max() > 0.1 * scale  # the features carry the image
    assert (before - after).abs().max() < 1e-4 * scale


def test_fusing_keeps_outputs_tiny():
    check_fusing_keeps_outputs(TINY, 128)


def test_fusing_keeps_outputs_real_size():
    """The real `fastvit_mci3` at 256² (a few seconds on one core)."""
    check_fusing_keeps_outputs(REAL_FASTVIT, 256)


def test_benchmark_model_is_fused():
    assert not unfused_modules(build_fastvlm(TINY))


@torch.inference_mode()
def test_visual_tokens_follow_the_strides():
    fast = FastViTHD(build_fastvlm(TINY))
    vit = QwenViT(build_vit(TINY))
    for side in (128, 192):
        assert fast.visual_tokens(side) == (side // 64) ** 2
        assert fast.encode(fast.random_input(side)).shape == ((side // 64) ** 2, 64)
    for side in (56, 84, 112):
        assert vit.visual_tokens(side) == (side // 28) ** 2
        assert vit.encode(vit.random_input(side)).shape == ((side // 28) ** 2, 64)
    assert FastViTHD.visual_tokens(1024) == 256
    # Qwen2.5-VL's processor rounds to multiples of 28: 256 -> 252 (81 tokens), 1024 -> 1036 (1369)
    assert [QwenViT.input_side(r) for r in (256, 512, 768, 1024)] == [252, 504, 756, 1036]
    assert QwenViT.visual_tokens(1036) == 37**2


def test_ttft_end_to_end_tiny():
    result = run_ttft([128, 192], tokens_per_pass=2.5, repeats=1, sizes=TINY, block_size=4, progress=False)
    json.dumps(result)  # the raw figures are JSON as they are
    assert result["settings"]["tokens_per_pass"] == 2.5
    for resolution, r in result["resolutions"].items():
        fast, vit = r["encoders"]["FastViTHD"], r["encoders"]["Qwen2.5-VL ViT"]
        side = int(resolution)
        assert fast["visual_tokens"] == (side // 64) ** 2
        assert vit["visual_tokens"] == (QwenViT.input_side(side) // 28) ** 2
        for e in (fast, vit):
            assert e["ttft_ms"] == pytest.approx(e["vision_ms"] + e["prefill_ms"] + e["head_ms"], abs=1e-6)
            assert min(e["vision_ms"], e["prefill_ms"], e["head_ms"], e["ar_pass_ms"]) > 0
            assert e["prompt_tokens"] == e["visual_tokens"] + 20
        assert r["vit_over_fastvithd"]["visual_tokens"] == vit["visual_tokens"] / fast["visual_tokens"]
        assert r["vit_over_fastvithd"]["ttft_ms"] == pytest.approx(vit["ttft_ms"] / fast["ttft_ms"])
        spec_pass = (fast["draft_pass_ms"] + fast["verify_pass_ms"]) / 2
        answers = r["answer_ms"]
        assert answers["ViT+AR"] == pytest.approx(vit["ttft_ms"] + 63 * vit["ar_pass_ms"])
        assert answers["FastViTHD+Fast-dVLM spec-linear"] == pytest.approx(
            fast["ttft_ms"] + 63 / 2.5 * spec_pass
        )
    table = markdown(result)
    assert "| 192² | FastViTHD | 192 | 9 |" in table and "**2.50, passed in by the caller**" in table


def test_answer_latency_formula():
    assert answer_ms(100.0, 10.0, 1.0, answer_tokens=64) == 730.0
    assert answer_ms(100.0, 10.0, 3.0, answer_tokens=64) == 310.0


def test_tokens_per_pass_is_read_not_invented(tmp_path):
    assert measured_tokens_per_pass(tmp_path / "missing.json")[0] == 1.0
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"modes": {"spec-linear": {"tokens_per_nfe": 2.63}}}))
    value, source = measured_tokens_per_pass(bench)
    assert value == 2.63 and str(bench) in source and "measured" in source
    bench.write_text(json.dumps({"modes": {"ar": {"tokens_per_nfe": 1.0}}}))
    with pytest.raises(FastDVLMError, match="spec-linear"):
        measured_tokens_per_pass(bench)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: run_ttft([100], sizes=TINY), "not a positive multiple of 64"),
        (lambda: run_ttft([256, 0], sizes=TINY), "not a positive multiple of 64"),
        (lambda: QwenViT.visual_tokens(250), "not a positive multiple of 28"),
        (lambda: FastViTHD.visual_tokens(250), "not a positive multiple of 64"),
        (lambda: run_ttft([128], tokens_per_pass=0.0, sizes=TINY), "tokens per pass must be positive"),
    ],
)
def test_bad_input_gives_one_clear_error(call, message):
    with pytest.raises(FastDVLMError, match=message):
        call()


def test_cli_rejects_bad_resolutions_in_one_line(capsys):
    assert main(["bench", "--ttft", "--resolutions", "256,100"]) == 2
    assert main(["bench", "--ttft", "--resolutions", "256,big"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "multiple of 64" in err[0] and "comma-separated integers" in err[1]
