"""FP8: the quantisation math, the emulated layer, the checkpoint, decoding a quantised model, and the
SGLang glue (its canvas logic here; its registration only where the pinned SGLang is installed)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

import fast_dvlm
from fast_dvlm import DiffusionVLM, FastDVLMError
from fast_dvlm.cli import main
from fast_dvlm.integrations.sglang import SGLANG_ALGORITHMS, SGLANG_VERSION, sglang_command
from fast_dvlm.integrations.sglang_canvas import canvas_decoder, denoise_step, start_canvas
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.prompt import encode_prompt
from fast_dvlm.quant import FP8Linear, quantize, save_quantized
from fast_dvlm.quant.fp8 import E4M3, fake_quantize, row_scales
from fast_dvlm.quant.fp8 import quantize as quantize_tensor
from fast_dvlm.quant.quantize import language_model_linears
from fast_dvlm.settings import DiffusionSettings

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
    assert torch.equal(quantize_tensor(x, row_scales(x)).float().abs().amax(-1), torch.full((8,), 448.0))
    values = e4m3_values()  # includes ±448, so each row's scale is exactly the power of two below
    rows = torch.stack([values * 2.0**k for k in (-9, 0, 6)])
    assert torch.equal(fake_quantize(rows), rows)


def test_zero_rows_quantise_to_zero_and_overflow_saturates():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 1.0]])
    assert torch.equal(fake_quantize(x), x)
    assert quantize_tensor(torch.tensor([[1000.0, -1000.0]]), torch.ones(1, 1)).float().tolist() == [
        [448.0, -448.0]
    ]


def test_same_codes_and_scales_as_torchao():
    pytest.importorskip("torchao", reason="torchao is not installed (pip install 'fast-dvlm[quant]')")
    from torchao.quantization import Float8Tensor, PerRow

    torch.manual_seed(1)
    for x in (torch.randn(48, 64) * torch.logspace(-3, 2, 48)[:, None], torch.randn(5, 7, 64)):
        theirs = Float8Tensor.from_hp(x, granularity=PerRow())
        assert torch.equal(row_scales(x), theirs.scale)
        assert torch.equal(
            quantize_tensor(x, row_scales(x)).view(torch.uint8), theirs.qdata.view(torch.uint8)
        )


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
        quantize_tensor(x, x_scale),
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
    from fast_dvlm.serve.app import ServeConfig, create_app
    from fast_dvlm.serve.load import client_for
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


# --- SGLang --------------------------------------------------------------------------------------


def test_canvas_step_on_a_toy_vocabulary():
    """B = 4, S = 2, τ = 0.9, mask id 5. Row j predicts position j + 1; the mask id is never chosen."""
    decoder = canvas_decoder(mask_id=5, block_size=4, settings={"sub_block_size": 2, "threshold": 0.9})
    canvas, masked = start_canvas(seed=1, decoder=decoder)
    assert canvas.tolist() == [1, 5, 5, 5] and masked.tolist() == [False, True, True, True]
    logits = torch.zeros(4, 6)
    logits[0, 2] = 10.0  # position 1: token 2, confidence 0.9998
    logits[1, 3] = 2.0  # position 2: token 3, confidence 0.65 (below τ, but the best of its sub-block)
    logits[2, 4], logits[2, 5] = 1.0, 20.0  # position 3: token 4 once the mask id is excluded
    logits[3, 0] = 50.0  # would predict past the canvas: never read
    assert not denoise_step(decoder, canvas, masked, logits)  # sub-block 0 only: position 1
    assert canvas.tolist() == [1, 2, 5, 5]
    assert not denoise_step(decoder, canvas, masked, logits)  # nothing above τ: the most confident
    assert canvas.tolist() == [1, 2, 3, 5]
    assert denoise_step(decoder, canvas, masked, logits)
    assert canvas.tolist() == [1, 2, 3, 4] and not masked.any()


def test_sglang_canvas_protocol_reproduces_the_engines_diffusion_decoding(quantised, images):
    """SGLang's separate-context loop in miniature: a causal pass over everything committed gives the
    seed, full-logit bidirectional passes over the canvas (keys discarded) are fed to `denoise_step`,
    the finished canvas is committed. The tokens are the engine's own diffusion output."""
    settings = {"sub_block_size": 4, "threshold": 0.7}
    for image in images:
        expected = quantised.generate("Describe it.", [image], "diffusion", 20, 8, 4, 0.7).token_ids
        options = quantised.decode_options(20, 8, 4, 0.7)
        engine, session, seed_logits = quantised._begin("Describe it.", [image], "diffusion", options)
        decoder = canvas_decoder(options.mask_id, 8, settings)
        tokens: list[int] = []
        while len(tokens) < 20 and not set(tokens) & quantised.stop_ids:
            canvas, masked = start_canvas(int(seed_logits.argmax()), decoder)
            while not denoise_step(
                decoder, canvas, masked, engine.denoise_logits(session, canvas, rows=slice(None))
            ):
                pass
            tokens += canvas.tolist()
            seed_logits = engine.causal_logits(session, canvas, rows=slice(-1, None))[0]  # the context pass
        stop = next((i for i, t in enumerate(tokens) if t in quantised.stop_ids), len(tokens) - 1)
        assert tokens[: min(stop + 1, 20)] == expected


def test_sglang_command_line():
    command = sglang_command(
        "runs/m-fp8", port=31000, algorithm_config="cfg.yaml", extra_args=["--tp-size", "2"]
    )
    assert command[1:] == [
        "-m", "sglang.launch_server", "--model-path", "runs/m-fp8", "--dllm-algorithm", "FastDVLMDiffusion",
        "--host", "127.0.0.1", "--port", "31000", "--dllm-algorithm-config", "cfg.yaml", "--tp-size", "2",
    ]  # fmt: skip
    with pytest.raises(FastDVLMError, match="has no SGLang algorithm"):
        sglang_command("runs/m", mode="spec-linear")


# --- the glue against the real SGLang: only where it is installed (its imports need no GPU) -------

SGLANG_CPU_SETUP = (
    "python -m venv --system-site-packages V && V/bin/pip install --no-deps sglang==0.5.23 pybase64 "
    "msgspec pyzmq apache-tvm-ffi gguf partial_json_parser"
)


def sglang_args(argv: list[str]) -> Any:
    """`ServerArgs` from SGLang's own command-line parser (unknown flags fail), for the part after `-m X`."""
    from sglang.srt.server_args import prepare_server_args

    assert argv[1:3] == ["-m", "sglang.launch_server"] and importlib.util.find_spec(argv[2]) is not None
    return prepare_server_args(argv[3:])


@pytest.fixture(scope="module")
def sglang_plugin() -> None:
    """fast-dvlm's plugin found through its entry point and run by SGLang's `load_plugins`, as every
    SGLang process does at start."""
    if importlib.util.find_spec("sglang") is None:
        pytest.skip(
            f"SGLang {SGLANG_VERSION} is not installed; to check the glue against it on CPU: "
            f"{SGLANG_CPU_SETUP}, then V/bin/python -m pytest tests/test_quant.py -k sglang"
        )
    from sglang.srt.dllm.config import DllmConfig
    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins, load_plugins_by_group

    from fast_dvlm.integrations.sglang import register

    assert load_plugins_by_group(GENERAL_PLUGINS_GROUP)["fast_dvlm"][0] is register
    original = DllmConfig.__dict__["from_server_args"]
    load_plugins()
    hooked = DllmConfig.__dict__["from_server_args"]
    assert isinstance(hooked, staticmethod) and hooked.__func__.__wrapped__ is original.__func__


@pytest.fixture(scope="module")
def sglang_checkpoint(
    sglang_plugin: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, DiffusionSettings]:
    """A converted, FP8-quantised checkpoint whose block settings are not fast-dvlm's defaults."""
    vlm = quantize(fresh_vlm(), "fp8-w8a8", emulate=True)
    vlm.settings.block_size, vlm.settings.sub_block_size, vlm.settings.threshold = 16, 4, 0.8
    path = tmp_path_factory.mktemp("sglang") / "model"
    save_quantized(vlm, path)
    return path, vlm.settings


def test_sglang_resolves_fast_dvlms_algorithm_and_model_class(sglang_plugin):
    import sglang
    from sglang.srt.dllm.algorithm import get_algorithm_cls
    from sglang.srt.dllm.algorithm.base import DllmAlgorithm
    from sglang.srt.models import qwen2_5_vl
    from sglang.srt.models.registry import ModelRegistry

    from fast_dvlm.integrations import sglang_dllm

    assert sglang.__version__ == SGLANG_VERSION
    for name in SGLANG_ALGORITHMS.values():
        algorithm = get_algorithm_cls(name)
        assert algorithm in sglang_dllm.ALGORITHMS and issubclass(algorithm, DllmAlgorithm)
        assert algorithm.__name__ == name and algorithm.requires_separate_context_encoding
    model_class, architecture = ModelRegistry.resolve_model_cls([sglang_dllm.ARCHITECTURE])
    assert model_class is sglang_dllm.Qwen2_5_VLForConditionalGeneration
    assert architecture == model_class.__name__ == sglang_dllm.ARCHITECTURE  # SGLang matches by name
    assert issubclass(model_class, qwen2_5_vl.Qwen2_5_VLForConditionalGeneration)


def test_sglang_reads_block_size_and_mask_id_from_a_converted_checkpoint(sglang_checkpoint, tmp_path):
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.dllm.algorithm import get_algorithm
    from sglang.srt.dllm.config import DllmConfig

    from fast_dvlm.integrations.sglang_dllm import FastDVLMDiffusion

    path, settings = sglang_checkpoint
    server_args = sglang_args(sglang_command(path))
    config = DllmConfig.from_server_args(server_args)
    mask = settings.mask_token_id
    assert (config.algorithm, config.block_size, config.mask_id) == ("FastDVLMDiffusion", 16, mask)
    assert config.algorithm_config == {"sub_block_size": 4, "threshold": 0.8}
    assert config.requires_separate_context_encoding and config.max_running_requests == 1
    algorithm = get_algorithm(config)
    options = algorithm.decoder.options
    assert (
        isinstance(algorithm, FastDVLMDiffusion) and algorithm.block_size == 16 and algorithm.mask_id == mask
    )
    assert (options.block_size, options.sub_block_size, options.threshold) == (16, 4, 0.8)
    assert options.mask_id == mask
    assert ModelConfig.from_server_args(server_args).quantization == "compressed-tensors"

    overrides = tmp_path / "algorithm.yaml"  # --dllm-algorithm-config wins over the checkpoint
    overrides.write_text("block_size: 8\nthreshold: 0.5\n")
    command = sglang_command(path, port=31000, algorithm_config=overrides, extra_args=["--device", "cpu"])
    server_args = sglang_args(command)
    server_args.resolve_once()  # SGLang's launch-time resolution: it sizes KV pages by the dLLM block
    view = resolving_view(server_args)
    assert (view.port, view.dllm_algorithm_config, view.page_size) == (31000, str(overrides), 8)
    config = DllmConfig.from_server_args(server_args)
    expected = {"sub_block_size": 4, "threshold": 0.5, "block_size": 8}
    assert (config.block_size, config.algorithm_config) == (8, expected)


def test_sglang_hook_leaves_other_checkpoints_and_algorithms_to_sglang(sglang_checkpoint, tmp_path):
    from sglang.srt.dllm.config import DllmConfig
    from sglang.srt.server_args import prepare_server_args

    path, _ = sglang_checkpoint
    assert DllmConfig.from_server_args(prepare_server_args(["--model-path", str(path)])) is None  # not a dLLM
    theirs = sglang_args(sglang_command(path, extra_args=["--dllm-algorithm", "LowConfidence"]))
    with pytest.raises(
        ValueError, match="fast-dvlm checkpoints decode with --dllm-algorithm FastDVLMDiffusion"
    ):
        DllmConfig.from_server_args(theirs)
    config = json.loads((path / "config.json").read_text())
    del config["fast_dvlm"]  # a plain Qwen2.5-VL: SGLang's own table has no diffusion settings for it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="Unknown diffusion LLM: Qwen2_5_VLForConditionalGeneration"):
        DllmConfig.from_server_args(sglang_args(sglang_command(tmp_path)))


def test_sglang_serve_launches_a_command_line_sglang_parses(sglang_checkpoint, monkeypatch):
    from sglang.srt.arg_groups.overrides import resolving_view

    from fast_dvlm.serve import command as serve_command

    path, _ = sglang_checkpoint
    launched: list[list[str]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no server starts: the call is caught
    monkeypatch.setattr(serve_command.subprocess, "call", lambda argv: launched.append(argv) or 0)
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--engine", "sglang", "--model", str(path), "--port", "31000"])
    monkeypatch.undo()
    assert exit_.value.code == 0 and launched == [sglang_command(path, port=31000)]
    view = resolving_view(sglang_args(launched[0]))
    assert (view.model_path, view.dllm_algorithm, view.port) == (str(path), "FastDVLMDiffusion", 31000)
