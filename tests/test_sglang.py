"""The SGLang glue: its canvas logic and command line here; its registration, checkpoint reading and
`fast-dvlm serve --engine sglang` only where the pinned SGLang is installed (its imports need no GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fast_dvlm import DiffusionVLM, FastDVLMError
from fast_dvlm.cli import main
from fast_dvlm.decoding.answer import run_alone
from fast_dvlm.integrations.sglang import SGLANG_ALGORITHMS, SGLANG_VERSION, sglang_command
from fast_dvlm.integrations.sglang_canvas import canvas_decoder, denoise_step, start_canvas
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.quant import quantize, save_quantized
from fast_dvlm.settings import DiffusionSettings

from .conftest import TEST_SIZE


def fresh_vlm() -> DiffusionVLM:
    """The tiny Qwen2.5-VL (seeded: every call builds the same model)."""
    return DiffusionVLM(*build_tiny_model("qwen2_5_vl", TEST_SIZE))


@pytest.fixture(scope="module")
def quantised() -> DiffusionVLM:
    """The converted tiny model, FP8 (W8A8) emulated: what an SGLang deployment serves."""
    return quantize(fresh_vlm(), "fp8-w8a8", emulate=True)


# --- the canvas logic and the command line --------------------------------------------------------


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
        engine = quantised.make_decoder("diffusion", options)
        answer = quantised.start(engine, quantised.encode("Describe it.", [image], options))
        session, seed_logits = answer.session, answer.first_logits
        decoder = canvas_decoder(options.mask_id, 8, settings)
        tokens: list[int] = []
        while len(tokens) < 20 and not set(tokens) & quantised.stop_ids:
            canvas, masked = start_canvas(int(seed_logits.argmax()), decoder)
            while not denoise_step(
                decoder,
                canvas,
                masked,
                run_alone(engine.denoise_logits(session, canvas, rows=slice(None)), session),
            ):
                pass
            tokens += canvas.tolist()
            seed_logits = run_alone(engine.causal_logits(session, canvas, rows=slice(-1, None)), session)[0]
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
            f"{SGLANG_CPU_SETUP}, then V/bin/python -m pytest tests/test_sglang.py"
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
