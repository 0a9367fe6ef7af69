"""The TTFT benchmark: fusing FastViTHD keeps its outputs, token counts follow the strides, each
figure is what the parts it names cost (on a clock only the model's parts advance), and bad
resolutions fail with one clear error before any building."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks import ttft
from benchmarks.ttft import (
    RESULTS,
    FastViTHD,
    QwenViT,
    TTFTSizes,
    build_fastvlm,
    build_vit,
    fuse_fastvit,
    main,
    markdown,
    measured_tokens_per_pass,
    resummarise,
    run_ttft,
    unfused_modules,
)
from fast_dvlm.decoding.lean import LeanTextModel
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


class CostClock:
    """A fake `perf_counter` that advances only when a part of the model runs, by a cost of our choosing.

    Forward hooks on the parts themselves (vision encoders, language model, output head) charge each
    call, so the study's figures can be checked against what actually ran: a study that timed, summed
    or averaged the wrong parts reads a different number. A vision call costs 0.1 ms per pixel of
    side (FastViTHD) or 0.3 (the ViT); the first call per input, the warm-up, costs 1000 ms instead,
    and the timed ones cost +9 / -3 / 0 ms more in turn (median +0, mean +2). A language-model pass
    costs 2 ms + 0.5 ms per position, the head 0.25 ms per row."""

    LM, PER_TOKEN, PER_ROW = 2.0, 0.5, 0.25
    PER_PIXEL = {FastViTHD.label: 0.1, QwenViT.label: 0.3}

    def __init__(self) -> None:
        self.seconds = 0.0
        self.vision_calls: dict[tuple[str, int], int] = {}

    def __call__(self) -> float:
        return self.seconds

    def charge(self, ms: float) -> None:
        self.seconds += ms / 1000

    def vision(self, label: str, side: int) -> float:
        return self.PER_PIXEL[label] * side

    def charge_vision(self, label: str, side: int) -> None:
        calls = self.vision_calls[label, side] = self.vision_calls.get((label, side), -1) + 1
        self.charge(1000.0 if calls == 0 else self.vision(label, side) + (9.0, -3.0, 0.0)[(calls - 1) % 3])

    def lm_pass(self, positions: int, rows: int) -> float:
        return self.LM + self.PER_TOKEN * positions + self.PER_ROW * rows

    def hook_language_model(self, model: torch.nn.Module) -> None:
        """Charge every pass of the language model by its positions, and of the head by its rows."""
        model.model.language_model.register_forward_hook(
            lambda m, args, kwargs, out: self.charge(
                self.LM + self.PER_TOKEN * kwargs["inputs_embeds"].shape[1]
            ),
            with_kwargs=True,
        )
        model.lm_head.register_forward_hook(
            lambda m, args, out: self.charge(self.PER_ROW * args[0].shape[:-1].numel())
        )


def test_ttft_figures_are_what_the_parts_cost(monkeypatch):
    """On a clock that only the model's parts advance, every figure of the study equals the cost of the
    parts it names: TTFT = vision + prefill of [visual | 20 text tokens] + a one-row head, each the
    median of its timed runs without the warm-up; AR, draft and verify passes over the B-token block;
    answers = TTFT + 63 passes, spec-linear's divided by the tokens per pass."""
    clock, block, tokens_per_pass = CostClock(), 4, 2.5
    monkeypatch.setattr(ttft, "time", SimpleNamespace(perf_counter=clock))
    # the clock's hooks sit on transformers' forward: decode on that engine, not the lean loop
    monkeypatch.setattr(LeanTextModel, "supports", staticmethod(lambda text_model: False))
    build_model, build_encoder = ttft.build_fastvlm, ttft.build_vit
    models = []

    def hooked_fastvlm(sizes, *args, **kwargs):
        model = build_model(sizes, *args, **kwargs)
        model.model.vision_tower.register_forward_hook(  # pixels [1, C, side, side]
            lambda m, args, out: clock.charge_vision(FastViTHD.label, args[0].shape[-1])
        )
        clock.hook_language_model(model)
        models.append(model)
        return model

    def hooked_vit(sizes, *args, **kwargs):
        vit = build_encoder(sizes, *args, **kwargs)
        vit.register_forward_hook(  # (patches, grid [[1, side / 14, side / 14]])
            lambda m, args, out: clock.charge_vision(QwenViT.label, int(args[1][0, 1]) * QwenViT.patch_size)
        )
        return vit

    monkeypatch.setattr(ttft, "build_fastvlm", hooked_fastvlm)
    monkeypatch.setattr(ttft, "build_vit", hooked_vit)
    result = run_ttft([128, 192], tokens_per_pass, repeats=3, sizes=TINY, block_size=block, progress=False)
    json.dumps(result)  # the raw figures are JSON as they are
    assert len(models) == 1 and result["settings"]["tokens_per_pass"] == tokens_per_pass
    assert list(result["resolutions"]) == ["128", "192"]
    for resolution, r in result["resolutions"].items():
        side = int(resolution)
        expected = {}
        for label, input_side, visual in (
            (FastViTHD.label, side, (side // 64) ** 2),
            (QwenViT.label, QwenViT.input_side(side), (QwenViT.input_side(side) // 28) ** 2),
        ):
            prompt = visual + 20
            parts = {
                "vision_ms": clock.vision(label, input_side),
                "prefill_ms": clock.LM + clock.PER_TOKEN * prompt,
                "head_ms": clock.PER_ROW,
            }
            expected[label] = {
                "input_side": input_side,
                "visual_tokens": visual,
                "prompt_tokens": prompt,
                **parts,
                "ttft_ms": sum(parts.values()),
                "ar_pass_ms": clock.lm_pass(1, 1),
                "draft_pass_ms": clock.lm_pass(block, block - 1),  # the last row would predict past the block
                "verify_pass_ms": clock.lm_pass(block, block),
            }
        for label, row in r["encoders"].items():
            assert {k: v for k, v in row.items() if k != "runs"} == pytest.approx(expected[label], rel=1e-9)
            assert row["runs"] == 3
        fast, vit = expected[FastViTHD.label], expected[QwenViT.label]
        spec_pass = (fast["draft_pass_ms"] + fast["verify_pass_ms"]) / 2
        assert r["answer_ms"] == pytest.approx(
            {
                "ViT+AR": vit["ttft_ms"] + 63 * vit["ar_pass_ms"],
                "FastViTHD+AR": fast["ttft_ms"] + 63 * fast["ar_pass_ms"],
                "FastViTHD+Fast-dVLM spec-linear": fast["ttft_ms"] + 63 / tokens_per_pass * spec_pass,
            },
            rel=1e-9,
        )
        ratios = {k: vit[k] / fast[k] for k in ("visual_tokens", "vision_ms", "prefill_ms", "ttft_ms")}
        assert r["vit_over_fastvithd"] == pytest.approx(ratios, rel=1e-9)
    table = markdown(result)
    assert "| 192² | FastViTHD | 192 | 9 |" in table and "**2.50, passed in by the caller**" in table


def test_recosting_the_stored_run_with_its_own_figure_gives_it_back_and_a_new_one_moves_only_spec():
    """`--recost` reuses the pass times of benchmarks/results/ttft.json: with the figure that run used
    it reproduces every answer latency; with another, only the spec-linear column moves, by the formula."""
    stored = json.loads((RESULTS / "ttft.json").read_text())
    used = stored["settings"]["tokens_per_pass"]
    again = resummarise(stored, used, stored["settings"]["tokens_per_pass_source"])
    for resolution, row in stored["resolutions"].items():
        assert again["resolutions"][resolution]["encoders"] == row["encoders"]
        for key in ("answer_ms", "vit_over_fastvithd"):
            assert again["resolutions"][resolution][key] == pytest.approx(row[key], rel=1e-12)
    other = resummarise(stored, 4.0, "a test")["resolutions"]
    for resolution, row in stored["resolutions"].items():
        fast = row["encoders"]["FastViTHD"]
        spec = fast["ttft_ms"] + 63 / 4.0 * (fast["draft_pass_ms"] + fast["verify_pass_ms"]) / 2
        answers = other[resolution]["answer_ms"]
        assert answers["FastViTHD+Fast-dVLM spec-linear"] == pytest.approx(spec, rel=1e-12)
        assert answers["ViT+AR"] == row["answer_ms"]["ViT+AR"]


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


def test_the_command_rejects_bad_resolutions_in_one_line(capsys):
    assert main(["--resolutions", "256,100"]) == 2
    assert main(["--resolutions", "256,big"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "multiple of 64" in err[0] and "comma-separated integers" in err[1]
