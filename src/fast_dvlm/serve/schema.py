"""The wire format: the chat-completions request as pydantic models, and the response bodies.

Strict models, so a wrong type is a 400 rather than a silent coercion ("10" is not a max_tokens).
Fields OpenAI clients commonly send but greedy decoding has no use for (temperature, top_p, seed,
user) are accepted and ignored; any other unknown field is an error, so a typo never goes unnoticed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import FastDVLMError
from ..modes import check_mode


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ImageURL(Strict):
    url: str = Field(description="a data: URL (base64) or a local file path under an operator-allowed folder")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None

    def to_chat(self, open_image: Callable[[str, str], Image.Image], param: str) -> dict[str, Any]:
        """This message in fast-dvlm's chat form, images opened (`param` names it in errors)."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        content = [
            {"type": "text", "text": part.text}
            if isinstance(part, TextPart)
            else {
                "type": "image",
                "image": open_image(part.image_url.url, f"{param}.content.{i}.image_url.url"),
            }
            for i, part in enumerate(self.content)
        ]
        return {"role": self.role, "content": content}


class StreamOptions(Strict):
    include_usage: bool = False


StopString = Annotated[str, Field(min_length=1)]


class ChatRequest(Strict):
    model: str | None = Field(
        default=None, description="not used: the server has one model, named in every reply"
    )
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    temperature: float | None = Field(default=None, ge=0, le=2)  # decoding is greedy: accepted, unused
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    user: str | None = None
    # fast-dvlm extras (OpenAI clients send them with `extra_body`)
    mode: str | None = Field(default=None, description="decoding algorithm; the server's default if absent")
    block_size: int | None = Field(default=None, ge=1)
    sub_block_size: int | None = Field(default=None, ge=1)
    threshold: float | None = Field(default=None, gt=0, le=1)

    @field_validator("mode")
    @classmethod
    def known_mode(cls, mode: str | None) -> str | None:
        try:
            return None if mode is None else check_mode(mode)
        except FastDVLMError as exc:
            raise ValueError(str(exc)) from None  # what pydantic reports as a 400 on this field

    def answer_cap(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


def usage(prompt_tokens: int, completion_tokens: int, nfe: int) -> dict[str, int]:
    """OpenAI's usage object plus `nfe`, the language-model passes this answer cost."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "nfe": nfe,
    }


class Reply:
    """The id, timestamp and model name shared by every body of one response."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def completion(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        return self._body("chat.completion", [choice]) | {"usage": usage}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._body("chat.completion.chunk", [choice])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self._body("chat.completion.chunk", []) | {"usage": usage}

    def _body(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
