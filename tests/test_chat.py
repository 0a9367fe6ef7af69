"""`fast-dvlm chat`: each turn sees the turns before it; bad input costs one line, not the session."""

from __future__ import annotations

import io

import pytest

from fast_dvlm.chat import Conversation, chat
from fast_dvlm.cli import main


@pytest.fixture(scope="module")
def vlm(tiny_vlms):
    return tiny_vlms["qwen2_5_vl"]


@pytest.fixture(scope="module")
def picture(tmp_path_factory, images):
    path = tmp_path_factory.mktemp("chat") / "scene.png"
    images[0].save(path)
    return str(path)


def scripted(lines: list[str]):
    """A `read` that answers with `lines`, then ends input as Ctrl-D does."""
    pending = iter(lines)

    def read(_prompt: str) -> str:
        line = next(pending, None)
        if line is None:
            raise EOFError
        return line

    return read


def test_a_follow_up_is_decoded_over_the_earlier_turns(vlm, picture, images):
    settings = {"max_new_tokens": 12}
    conversation = Conversation(picture)
    first = conversation.ask(vlm, "What is shown?", "spec-linear", **settings)
    second = conversation.ask(vlm, "And its colour?", "spec-linear", **settings)
    history = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]},
    ]
    expected = vlm.generate(history, [images[0]], "spec-linear", **settings)
    assert second.token_ids == expected.token_ids
    alone = vlm.generate("And its colour?", [images[0]], "spec-linear", **settings)
    assert second.prompt_tokens > alone.prompt_tokens  # the history really was in the prompt
    assert len(conversation.messages) == 4


def test_the_session_survives_bad_input_and_reset_forgets(vlm, picture, images):
    written: list[str] = []
    lines = [
        "What is shown?",
        "/image /no/such.png",
        "/frobnicate",
        "",
        "/reset",
        "What is shown?",
        "/quit",
        "x",
    ]
    chat(vlm, Conversation(picture), "ar", read=scripted(lines), write=written.append, max_new_tokens=8)
    answers = [
        w for k, w in enumerate(written) if k + 1 < len(written) and written[k + 1].startswith("  [ar]")
    ]
    assert len(answers) == 2 and answers[0] == answers[1]  # after /reset the same question, the same answer
    assert answers[0] == vlm.generate("What is shown?", [images[0]], "ar", 8).text
    assert any(w.startswith("error: image file not found: /no/such.png") for w in written)
    assert any(w.startswith("unknown command /frobnicate") for w in written)
    assert sum(w.startswith("  [ar]") for w in written) == 2  # nothing after /quit


def test_a_bad_image_ends_the_command_with_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["chat", "--image", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a valid image file" in err[0]


def test_piped_input_reads_as_a_transcript(picture, monkeypatch, capsys):
    """Piped questions are not shown by the terminal: each is echoed after its prompt, /reset says
    so, and the output ends with a newline even though input ended at a prompt."""
    monkeypatch.setattr("sys.stdin", io.StringIO("What is shown?\n/reset\n"))
    assert main(["chat", "--model", "tiny:qwen2_5_vl", "--image", picture, "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "with mode ar\nyou> What is shown?\n" in out  # a model never converted: ar by default
    assert f"you> /reset\nconversation reset: the next question about {picture} starts afresh\n" in out
    assert out.endswith("you> \n")


def test_a_terminal_is_not_echoed(vlm, picture):
    written: list[str] = []
    chat(vlm, Conversation(picture), "ar", read=scripted(["/reset"]), write=written.append)
    assert written[1:] == ["conversation reset: the next question about " + picture + " starts afresh", ""]
