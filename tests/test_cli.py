"""The command line: a real run, and bad input that must end in one clear line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fast_dvlm import DiffusionVLM
from fast_dvlm.cli import main
from fast_dvlm.decoding import DECODERS
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.modes import MODES

from .conftest import TEST_SIZE


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fast_dvlm.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_vlms, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    tiny_vlms["qwen2_5_vl"].save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory, images):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    images[0].save(path)
    return path


def test_generate_prints_answer_and_stats(checkpoint, picture, tiny_vlms):
    args = ["--model", str(checkpoint), "--image", str(picture), "--prompt", "What is it?"]
    result = run_cli("generate", *args, "--max-new-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = tiny_vlms["qwen2_5_vl"].generate("What is it?", [picture], max_new_tokens=8)
    assert out["token_ids"] == expected.token_ids
    assert out["nfe"] == len(out["token_ids"])


def test_generate_plain_output(checkpoint, picture, capsys):
    args = ["--model", str(checkpoint), "--image", str(picture), "--prompt", "Hi", "--max-new-tokens", "4"]
    assert main(["generate", *args]) == 0
    captured = capsys.readouterr()
    assert "tokens/NFE" in captured.err and "[ar] 4 tokens, 4 NFE" in captured.err


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing-image", "image file not found"),
        ("corrupt-image", "not a valid image"),
        ("empty-prompt", "prompt is empty"),
        ("not-a-model", "not a model directory"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(case, message, checkpoint, picture, tmp_path, capsys):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    args = {
        "missing-image": [
            "--model",
            str(checkpoint),
            "--image",
            str(tmp_path / "none.png"),
            "--prompt",
            "Hi",
        ],
        "corrupt-image": ["--model", str(checkpoint), "--image", str(corrupt), "--prompt", "Hi"],
        "empty-prompt": ["--model", str(checkpoint), "--image", str(picture), "--prompt", "  "],
        "not-a-model": ["--model", str(tmp_path), "--prompt", "Hi"],
    }[case]
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_block_settings_are_rejected(checkpoint, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(checkpoint),
            "--prompt",
            "Hi",
            "--block-size",
            "8",
            "--sub-block-size",
            "3",
        ]
    )
    assert code == 2
    assert "must be a positive divisor" in capsys.readouterr().err


def test_help_runs_in_a_fresh_process():
    result = run_cli("generate", "--help")
    assert result.returncode == 0 and "--max-new-tokens" in result.stdout


def test_chat_help_and_a_quiet_start():
    result = run_cli("chat", "--help")
    assert result.returncode == 0 and "/image FILE" in result.stdout
    assert "spec-linear for a converted model, ar for one never converted" in " ".join(result.stdout.split())
    # transformers imports torchao, whose enum registration makes torch warn on every start
    assert "Enum subclass" not in result.stderr


def test_help_imports_neither_torch_nor_transformers():
    """`fast-dvlm --help` answers at once: the parser is built from light modules only."""
    check = "import sys; from fast_dvlm.cli import build_parser; build_parser(); "
    check += "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    assert tuple(DECODERS) == MODES  # the light list of modes names every decoder


def test_generate_help_names_the_shipped_models(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "demo or demo-ar (the shipped demo models)" in help_text
    assert "spec-linear for a converted model, ar for one never converted" in help_text


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_an_unknown_mode_is_one_error_line(command, capsys):
    args = ["--model", "tiny:qwen2_5_vl", "--mode", "turbo"]
    args += {"generate": ["--prompt", "Hi"], "chat": ["--image", "x.png"], "serve": []}[command]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        "fast-dvlm: error: unknown decoding mode 'turbo'; choose one of: ar, diffusion, spec-linear, "
        "spec-quadratic\n"
    )


def test_a_prompt_over_the_context_is_one_error_line(checkpoint, capsys):
    args = ["--model", str(checkpoint), "--prompt", "Hi", "--max-new-tokens", "5000"]
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err  # no loading bar either
    assert err.startswith("fast-dvlm: error: the prompt is ") and err.count("\n") == 1
    assert "over this model's context length of 4096 tokens" in err


def test_generate_defaults_to_the_checkpoint_s_mode(checkpoint, tmp_path, capsys):
    converted = DiffusionVLM(*build_tiny_model("qwen2_5_vl", TEST_SIZE))
    converted.settings.recipe = {"recipe": {"alpha_diffusion": 0.5, "beta_ar": 0.5}}
    converted.save_pretrained(tmp_path)
    for model, mode in ((checkpoint, "ar"), (tmp_path, "spec-linear")):
        args = ["--model", str(model), "--prompt", "Hi", "--max-new-tokens", "4", "--json"]
        assert main(["generate", *args]) == 0
        assert json.loads(capsys.readouterr().out)["mode"] == mode
