"""`fast-dvlm chat`: ask a model your own questions about an image, in the terminal.

Every turn is decoded over the whole conversation so far, so a follow-up question sees the earlier
answers (the demo models were trained on 2-3 questions per image)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import FastDVLMError
from .modes import resolve_mode
from .prompt import Messages, load_image
from .vlm import DiffusionVLM, GenerationOutput

HELP = "commands: /image FILE (new image, new conversation), /reset (forget the answers), /quit"


class Conversation:
    """The turns so far about one image, as chat messages."""

    def __init__(self, image_path: str) -> None:
        self.path = image_path
        self.image = load_image(image_path)
        self.messages: Messages = []

    def ask(self, vlm: DiffusionVLM, question: str, mode: str | None, **settings: Any) -> GenerationOutput:
        content = [{"type": "text", "text": question}]
        if not self.messages:
            content.insert(0, {"type": "image"})
        turn = {"role": "user", "content": content}
        out = vlm.generate([*self.messages, turn], [self.image], mode, **settings)
        self.messages += [turn, {"role": "assistant", "content": out.text}]
        return out


def chat(
    vlm: DiffusionVLM,
    conversation: Conversation,
    mode: str | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    echo: bool = False,
    **settings: Any,
) -> None:
    """Read questions with `read` until /quit or end of input; write each answer and its speed.
    A bad image or a failed turn prints one error line and the conversation goes on.

    `echo` writes each line read after its prompt: with piped input nothing else shows the
    questions, and the output should read as a transcript."""
    mode = resolve_mode(mode, converted=vlm.settings.converted)
    write(f"{HELP}\nasking about {conversation.path} with mode {mode}")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("")  # end the prompt's line: the output ends with a newline
            return
        if echo:
            write(line)
        if line in ("/quit", "/exit"):
            return
        try:
            if line == "/reset":
                conversation.messages = []
                write(f"conversation reset: the next question about {conversation.path} starts afresh")
            elif line.startswith("/image"):
                conversation = Conversation(line.removeprefix("/image").strip())
                write(f"asking about {conversation.path}")
            elif line.startswith("/"):
                write(f"unknown command {line.split()[0]}; {HELP}")
            elif line:
                out = conversation.ask(vlm, line, mode, **settings)
                write(out.text)
                write(
                    f"  [{out.mode}] {len(out.token_ids)} tokens, {out.tokens_per_nfe:.2f} tokens/NFE, "
                    f"{out.tokens_per_second:.0f} tokens/s"
                )
        except FastDVLMError as exc:
            write(f"error: {exc}")
