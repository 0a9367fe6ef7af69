"""The command line: a real run, and bad input that must end in one clear line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fast_dvlm.cli import main


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
    assert (
        result.returncode == 0 and "/image FILE" in result.stdout and "default: spec-linear" in result.stdout
    )
    # transformers imports torchao, whose enum registration makes torch warn on every start
    assert "Enum subclass" not in result.stderr
