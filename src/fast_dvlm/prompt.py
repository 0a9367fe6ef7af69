"""From what a user passes to `generate` (a string or chat messages, plus images) to processor inputs."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin

from .errors import FastDVLMError, first_line

ImageLike = Image.Image | str | Path
Messages = list[dict[str, Any]]


def image_error(exc: Exception) -> str:
    """Why PIL could not read an image, in one line fit for a user: PIL's own messages name an
    in-memory source by its Python repr (`<_io.BytesIO object at 0x7f...>`), which says nothing."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a valid image file (no image format recognised)"
    reason = first_line(exc, re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)))
    return f"not a valid image file ({reason})"


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or a file path; one clear error for anything unreadable."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FastDVLMError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FastDVLMError(f"cannot read image {path}: {image_error(exc)}") from None


def to_messages(
    prompt: str | Messages, images: Sequence[ImageLike] | None
) -> tuple[Messages, list[Image.Image]]:
    """Normalise a prompt into chat messages and the ordered list of images they refer to.

    A string becomes one user turn with the images first, then the text. In messages, an image
    part carries its image (`{"type": "image", "image": img}`) or is a bare placeholder
    (`{"type": "image"}`) filled in order from `images`.
    """
    if isinstance(images, str | Path | Image.Image):
        raise FastDVLMError(
            f"images must be a list of images, got one {type(images).__name__}: wrap it in [...]"
        )
    supplied = [load_image(i) for i in images or []]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise FastDVLMError("the prompt is empty: give a question or instruction")
        content = [{"type": "image"} for _ in supplied] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}], supplied
    if not isinstance(prompt, list) or not prompt:
        raise FastDVLMError("the prompt must be a non-empty string or a non-empty list of chat messages")

    messages = copy.deepcopy(prompt)
    ordered: list[Image.Image] = []
    pending = iter(supplied)
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise FastDVLMError("each chat message must be a dict with 'role' and 'content'")
        if isinstance(message["content"], str):
            continue
        if not isinstance(message["content"], list) or not all(
            isinstance(p, dict) for p in message["content"]
        ):
            raise FastDVLMError(
                "a message's content must be a string or a list of parts like {'type': 'text', ...}"
            )
        for part in message["content"]:
            if part.get("type") != "image":
                continue
            if part.get("image") is not None:
                ordered.append(load_image(part.pop("image")))
            else:
                image = next(pending, None)
                if image is None:
                    raise FastDVLMError("the messages have more image placeholders than images were given")
                ordered.append(image)
    if next(pending, None) is not None:
        raise FastDVLMError("more images were given than the messages have image placeholders")
    return messages, ordered


def encode_prompt(
    processor: ProcessorMixin, prompt: str | Messages, images: Sequence[ImageLike] | None = None
) -> BatchFeature:
    """Render the prompt with the processor's own chat template and run the processor on it."""
    messages, pil_images = to_messages(prompt, images)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=pil_images or None, return_tensors="pt")
