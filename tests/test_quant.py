"""FP8: the quantisation math, the emulated layer, the checkpoint and decoding a quantised model
(the SGLang glue that serves such checkpoints is tested in test_sglang.py)."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from safetensors import safe_open
from torch import nn

import fast_dvlm
from fast_dvlm import DiffusionVLM, FastDVLMError
from fast_dvlm.cli import main
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.prompt import encode_prompt
from fast_dvlm.quant import FP8Linear, quantize, save_quantized
from fast_dvlm.quant.fp8 import E4M3, fake_quantize, row_scales, to_e4m3
from fast_dvlm.quant.quantize import language_model_linears

from .conftest import TEST_SIZE

quantize_module = importlib.import_module("fast_dvlm.quant.quantize")  # the package exports the function


def e4m3_values() -> torch.Tensor:
    """Every finite e4m3 value, read off its 256 bit patterns (two of which are NaN)."""
    values = torch.arange(256, dtype=torch.uint8).view(E4M3).float()
    return values[~values.isnan()]


def round_to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """The nearest finite e4m3 value, by definition: a search over all of them (float64)."""
    table = e4m3_values().double().unique()
    return table[(v.double()[..., None] - table).abs().argmin(-1)]


def fresh_vlm() -> DiffusionVLM:
    return DiffusionVLM(
        *build_tiny_model("qwen2_5_vl", TEST_SIZE)
    )  # seeded: every call builds the same model


# --- the math ----------------------------------------------------------------------------------


def test_round_trip_error_is_at_most_half_an_e4m3_step():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-4, 3, 64)[:, None]  # rows of very different magnitudes
    x_hat = fake_quantize(x)
    scale = x.abs().amax(-1, keepdim=True) / 448
    error = (x_hat - x).abs()
    normal = x.abs() >= scale * 2**-6  # e4m3's normal range, after scaling: 3 mantissa bits
    assert (error <= 2**-4 * x.abs() * (1 + 1e-6))[normal].all()
    assert (error <= scale * 2**-10 * (1 + 1e-6))[~normal].all()  # subnormals: steps of 2^-9
    assert 0 < (error / x.abs())[normal].mean() < 2**-5


def test_each_rows_largest_value_maps_onto_448_and_representable_values_are_exact():
    x = torch.randn(8, 32)
    assert torch.equal(to_e4m3(x, row_scales(x)).float().abs().amax(-1), torch.full((8,), 448.0))
    values = e4m3_values()  # includes ±448, so each row's scale is exactly the power of two below
    rows = torch.stack([values * 2.0**k for k in (-9, 0, 6)])
    assert torch.equal(fake_quantize(rows), rows)


def test_zero_rows_quantise_to_zero_and_overflow_saturates():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 1.0]])
    assert torch.equal(fake_quantize(x), x)
    assert to_e4m3(torch.tensor([[1000.0, -1000.0]]), torch.ones(1, 1)).float().tolist() == [[448.0, -448.0]]


def test_same_codes_and_scales_as_torchao():
    pytest.importorskip("torchao", reason="torchao is not installed (pip install 'fast-dvlm[quant]')")
    from torchao.quantization import Float8Tensor, PerRow

    torch.manual_seed(1)
    for x in (torch.randn(48, 64) * torch.logspace(-3, 2, 48)[:, None], torch.randn(5, 7, 64)):
        theirs = Float8Tensor.from_hp(x, granularity=PerRow())
        assert torch.equal(row_scales(x), theirs.scale)
        assert torch.equal(to_e4m3(x, row_scales(x)).view(torch.uint8), theirs.qdata.view(torch.uint8))


# --- the emulated layer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear() -> nn.Linear:
    torch.manual_seed(2)
    layer = nn.Linear(64, 48)
    layer.weight.data *= torch.logspace(-1, 1, 48)[:, None]  # output channels of different magnitudes
    return layer


@pytest.mark.parametrize("quantize_input", [True, False], ids=["w8a8", "weight-only"])
def test_emulated_linear_equals_the_formula(linear, quantize_input):
    """y[t, o] = Σ_i x̂[t, i] ŵ[o, i] + b[o], where ŵ[o, :] = e4m3(w[o, :] / s_o) s_o with
    s_o = max_i |w[o, i]| / 448 and, for W8A8, x̂[t, :] = e4m3(x[t, :] / r_t) r_t with
    r_t = max_i |x[t, i]| / 448 (scales and divisions in fp32, everything after in float64)."""
    torch.manual_seed(3)
    x = torch.randn(2, 5, 64) * torch.tensor([0.1, 30.0])[:, None, None]
    w, b = linear.weight.detach(), linear.bias.detach()
    s = w.abs().amax(1, keepdim=True) / 448
    w_hat = round_to_e4m3(w / s) * s.double()
    x_hat = x.double()
    if quantize_input:
        r = x.abs().amax(-1, keepdim=True) / 448
        x_hat = round_to_e4m3(x / r) * r.double()
    expected = x_hat @ w_hat.T + b.double()
    got = FP8Linear.from_linear(linear, quantize_input)(x)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 48)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, linear(x), rtol=1e-3, atol=1e-3)  # and it is not the fp32 layer


def test_emulated_w8a8_equals_an_fp8_gemm(linear):
    """`torch._scaled_mm` (the FP8 GEMM torchao calls on a GPU) also runs on CPU: same result."""
    torch.manual_seed(4)
    x = torch.randn(16, 64)
    layer = FP8Linear.from_linear(linear, quantize_input=True)
    x_scale = row_scales(x)
    gemm = torch._scaled_mm(
        to_e4m3(x, x_scale),
        layer.weight.t(),
        scale_a=x_scale,
        scale_b=layer.weight_scale.t(),
        out_dtype=torch.float32,
    )
    torch.testing.assert_close(layer(x), gemm + linear.bias, rtol=1e-5, atol=1e-5)


def test_dtype_casts_keep_the_fp8_weight_and_fp32_scales(linear):
    layer = FP8Linear.from_linear(linear, quantize_input=True)
    codes, scales = layer.weight.clone(), layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == E4M3 and torch.equal(layer.weight.view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(layer.weight_scale, scales) and layer.bias.dtype == torch.bfloat16
    assert layer(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


# --- a quantised model and its checkpoint ------------------------------------------------------


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "torchao"])
def test_the_lean_path_decodes_a_quantised_model_as_transformers_does(native, monkeypatch, images):
    """The lean path calls plain linear layers directly; an FP8 module, or torchao's FP8 weight inside
    an `nn.Linear`, must still run as itself (same tokens as on transformers' forward)."""
    if native:
        pytest.importorskip("torchao", reason="torchao is not installed (pip install 'fast-dvlm[quant]')")
        monkeypatch.setattr(quantize_module, "native_fp8_available", lambda: True)
    vlm = quantize(fresh_vlm(), "fp8-weight", emulate=not native)
    answers = {
        engine: vlm.generate("Describe the picture.", [images[0]], "ar", 12, engine=engine)
        for engine in ("lean", "transformers")
    }
    assert len(answers["lean"].token_ids) > 1
    assert answers["lean"].token_ids == answers["transformers"].token_ids


@pytest.fixture(scope="module")
def reference() -> DiffusionVLM:
    return fresh_vlm()


@pytest.fixture(scope="module")
def quantised() -> DiffusionVLM:
    return quantize(fresh_vlm(), "fp8-w8a8", emulate=True)


@pytest.fixture(scope="module")
def saved(quantised, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp8") / "model"
    save_quantized(quantised, path)
    return path


def logits_of(vlm: DiffusionVLM, image) -> torch.Tensor:
    with torch.inference_mode():
        return vlm.model(**encode_prompt(vlm.processor, "What is in the picture?", [image])).logits


def test_only_the_language_models_linears_are_quantised(reference, quantised):
    linears = language_model_linears(reference)
    lm = quantised.family.language_model(quantised.model)
    assert len(linears) == 14 and all(isinstance(lm.get_submodule(n), FP8Linear) for n in linears)
    fp8 = [m for m in quantised.model.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == len(linears)
    ours = quantised.model.state_dict()
    fp8_weights = {f"model.language_model.{name}.weight" for name in linears}
    kept = {k: v for k, v in reference.model.state_dict().items() if k not in fp8_weights}
    assert any(k.startswith("model.visual.") for k in kept) and "lm_head.weight" in kept
    for key, value in kept.items():  # vision tower, embeddings, lm_head, norms, biases: untouched fp32
        assert ours[key].dtype == torch.float32 and torch.equal(ours[key], value), key


def test_checkpoint_holds_fp8_weights_and_a_compressed_tensors_config(reference, saved):
    config = json.loads((saved / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["format"], q["quantization_status"]) == (
        "compressed-tensors",
        "float-quantized",
        "compressed",
    )
    (group,) = q["config_groups"].values()
    assert group["targets"] == ["Linear"]
    assert {k: group["weights"][k] for k in ("num_bits", "type", "strategy", "dynamic")} == {
        "num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False
    }  # fmt: skip
    assert {k: group["input_activations"][k] for k in ("num_bits", "type", "strategy", "dynamic")} == {
        "num_bits": 8, "type": "float", "strategy": "token", "dynamic": True
    }  # fmt: skip
    assert config["fast_dvlm"]["mask_token_id"] is not None

    def ignored(name: str) -> bool:  # compressed-tensors' and SGLang's rule
        return any(
            re.match(e[3:], name) if e.startswith("re:") else name == e or name.endswith("." + e)
            for e in q["ignore"]
        )

    with safe_open(saved / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    fp8 = {k.removesuffix(".weight_scale") for k in tensors if k.endswith(".weight_scale")}
    assert len(fp8) == 14
    for name in fp8:
        weight, scale = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"]
        assert weight.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (weight.shape[0], 1)
        assert not ignored(name)
    high = [
        k.removesuffix(".weight")
        for k in tensors
        if k.startswith(("visual.", "lm_head")) and k.endswith("weight")
    ]
    assert high and all(ignored(n) and tensors[f"{n}.weight"].dtype == torch.float32 for n in high)
    others = [
        n
        for n, m in reference.model.named_modules()
        if isinstance(m, nn.Linear) and "language_model" not in n
    ]
    assert others and all(map(ignored, others))  # transformers' own names for them, too
    unquantised = sum(reference.model.state_dict()[k].numel() * 4 for k in reference.model.state_dict())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) < unquantised


def test_reloaded_checkpoint_gives_identical_logits(quantised, saved, images):
    loaded = fast_dvlm.load(saved)
    lm = loaded.family.language_model(loaded.model)
    assert all(isinstance(lm.get_submodule(n), FP8Linear) for n in language_model_linears(quantised))
    assert loaded.model.config.quantization_config == quantised.model.config.quantization_config
    assert torch.equal(logits_of(loaded, images[0]), logits_of(quantised, images[0]))


def test_transformers_with_compressed_tensors_reads_the_same_model(reference, quantised, saved, images):
    """An independent reader: transformers hands the checkpoint to the compressed-tensors package (the
    library SGLang and vLLM parse these configs with), which applies its own FP8 math on CPU."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")
    theirs = type(quantised.model).from_pretrained(saved, dtype=torch.float32)
    schemes = {n for n, m in theirs.named_modules() if getattr(m, "quantization_scheme", None) is not None}
    assert schemes == {f"model.language_model.{name}" for name in language_model_linears(reference)}
    with torch.inference_mode():
        batch = encode_prompt(quantised.processor, "What is in the picture?", [images[0]])
        assert torch.equal(theirs(**batch).logits, logits_of(quantised, images[0]))


def test_quantisation_changes_the_logits_a_little(images):
    """On a tiny model with realistic initialisation (the fixtures' large one makes it chaotic)."""
    reference = fast_dvlm.load("tiny:qwen2_5_vl")
    for scheme in ("fp8-w8a8", "fp8-weight"):
        quantised = quantize(fast_dvlm.load("tiny:qwen2_5_vl"), scheme, emulate=True)
        ref, fp8 = logits_of(reference, images[1]), logits_of(quantised, images[1])
        assert 1e-4 < float((fp8 - ref).norm() / ref.norm()) < 0.1


def test_spec_linear_on_the_quantised_model_is_its_own_greedy_ar(quantised, images):
    for prompt, image in (("Describe the picture.", images[0]), ("What colour is the shape?", images[1])):
        ar = quantised.generate(prompt, [image], mode="ar", max_new_tokens=24)
        spec = quantised.generate(prompt, [image], mode="spec-linear", max_new_tokens=24, block_size=8)
        assert len(ar.token_ids) > 1 and spec.token_ids == ar.token_ids


def test_the_server_serves_the_saved_checkpoint_with_its_own_answers(quantised, saved):
    """quantise -> save -> `fast_dvlm.load` -> serve: the OpenAI endpoint answers what the in-memory
    quantised model decodes, in AR and in a self-speculative mode."""
    from benchmarks.serve_load import client_for
    from fast_dvlm.serve.app import ServeConfig, create_app
    from fast_dvlm.serve.runner import serving_in_background

    prompt = "What colour is the shape?"
    with serving_in_background(create_app(fast_dvlm.load(saved), ServeConfig("fp8", mode="ar"))) as url:
        for mode in ("ar", "spec-linear"):
            reply = client_for(url).chat.completions.create(
                model="fp8", messages=[{"role": "user", "content": prompt}], max_tokens=16,
                extra_body={"mode": mode},
            )  # fmt: skip
            expected = quantised.generate(prompt, mode=mode, max_new_tokens=16)
            assert reply.usage.completion_tokens == len(expected.token_ids) > 1
            assert reply.choices[0].message.content == expected.text


def test_no_fp8_hardware_means_one_clear_error_naming_emulation(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(quantize_module, "native_fp8_available", lambda: False)
    with pytest.raises(FastDVLMError, match="emulate=True"):
        quantize(fresh_vlm(), "fp8-w8a8")
    with pytest.raises(FastDVLMError, match="unknown quantisation scheme"):
        quantize(fresh_vlm(), "int4", emulate=True)
    args = ["quantize", "--model", "tiny:qwen2_5_vl", "--scheme", "fp8-weight", "--out", str(tmp_path / "q")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--emulate" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_cli_writes_a_loadable_weight_only_checkpoint(tmp_path):
    out = tmp_path / "q"
    args = [
        "quantize",
        "--model",
        "tiny:qwen2_5_vl",
        "--scheme",
        "fp8-weight",
        "--out",
        str(out),
        "--emulate",
    ]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["input_activations"] is None
    assert config["dtype"] == "bfloat16"  # the high-precision parts, as a GPU serves them
    loaded = fast_dvlm.load(out)
    layer = loaded.family.language_model(loaded.model).get_submodule("layers.0.mlp.up_proj")
    assert isinstance(layer, FP8Linear) and not layer.quantize_input


def test_native_torchao_path_writes_the_same_checkpoint(monkeypatch, tmp_path):
    """torchao's weight-only FP8 runs on CPU, so the GPU path's checkpoint writing can be checked here."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install 'fast-dvlm[quant]')")
    monkeypatch.setattr(quantize_module, "native_fp8_available", lambda: True)
    save_quantized(quantize(fresh_vlm(), "fp8-weight"), tmp_path / "native")
    save_quantized(quantize(fresh_vlm(), "fp8-weight", emulate=True), tmp_path / "emulated")
    files = [safe_open(tmp_path / d / "model.safetensors", "pt") for d in ("native", "emulated")]
    assert sorted(files[0].keys()) == sorted(files[1].keys())
    for key in files[0].keys():  # noqa: SIM118
        a, b = files[0].get_tensor(key), files[1].get_tensor(key)
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), key
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("native", "emulated")]
    assert configs[0]["quantization_config"] == configs[1]["quantization_config"]


def test_an_fp8_model_gets_its_own_pass_cost_curve():
    """The pass-cost key tells an FP8-emulated model from the unquantised one of the same shape, so
    `fast-dvlm bench` on the FP8 copy does not overwrite the original's curve (it once did)."""
    from fast_dvlm.decoding.cost import cost_key
    from fast_dvlm.decoding.session import Session

    plain, quantised = fresh_vlm(), quantize(fresh_vlm(), "fp8-w8a8", emulate=True)  # as loaded apart
    key = cost_key(Session(plain.model, plain.family))
    assert cost_key(Session(quantised.model, quantised.family)) != key
    assert cost_key(Session(fresh_vlm().model, plain.family)) == key  # the same shape and layers: shared
