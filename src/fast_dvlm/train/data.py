"""LLaVA-style conversation data, rendered through the family's processor and chat template.

A record is `{"image": path | [paths], "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}`
(JSON list or JSONL). `<image>` in a human turn marks where an image goes; images without a
placeholder go before the first human turn's text. Broken records are skipped and counted, never
fatal: the counts are reported at the end of a run.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm
from transformers import ProcessorMixin

from ..conversion.objective import Sample
from ..errors import FastDVLMError
from ..models.family import Family

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class BadRecord(ValueError):
    """A record that cannot be trained on; its message is the reason counted in the report."""


@dataclass
class Conversation:
    images: list[Path]
    turns: list[tuple[str, str]]  # (user, assistant) pairs


def read_records(path: Path) -> Iterator[Any]:
    """Records of a JSON list or a JSONL file."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield BadRecord(f"invalid JSON on line {number}")


def parse_record(record: Any, image_root: Path) -> Conversation:
    """Validate one record's structure and images; raise BadRecord with a short reason."""
    if isinstance(record, BadRecord):
        raise record
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    messages = record.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise BadRecord("empty conversation")
    roles = [ROLES.get(m.get("from")) if isinstance(m, dict) else None for m in messages]
    if len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
        raise BadRecord("turns do not alternate human/gpt")
    values = [m.get("value") for m in messages]
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise BadRecord("empty message")
    names = record.get("image") or record.get("images") or []
    images = [image_root / n for n in ([names] if isinstance(names, str) else names)]
    placeholders = sum(v.count(IMAGE_PLACEHOLDER) for v in values[0::2])
    if placeholders not in (0, len(images)) or any(IMAGE_PLACEHOLDER in v for v in values[1::2]):
        raise BadRecord("image placeholders do not match the images")
    for image in images:
        if not image.is_file():
            raise BadRecord("missing image file")
        try:
            with Image.open(image) as opened:
                opened.verify()
        except Exception:  # PIL raises many types for damaged files
            raise BadRecord("corrupt image") from None
    return Conversation(images, list(zip(values[0::2], values[1::2], strict=True)))


def to_messages(conversation: Conversation, text_only: bool = False) -> list[dict[str, Any]]:
    """Chat messages with image parts where the `<image>` placeholders were (or first, if none)."""
    messages = []
    leading = not any(IMAGE_PLACEHOLDER in u for u, _ in conversation.turns)
    for turn, (user, assistant) in enumerate(conversation.turns):
        content: list[dict[str, Any]] = []
        if leading and turn == 0 and not text_only:
            content += [{"type": "image"} for _ in conversation.images]
        for k, piece in enumerate(user.split(IMAGE_PLACEHOLDER)):
            if k and not text_only:
                content.append({"type": "image"})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
    return messages


def render(
    processor: ProcessorMixin, family: Family, conversation: Conversation, text_only: bool = False
) -> Sample:
    """Processor inputs for the whole conversation, and which tokens are assistant responses."""
    text = processor.apply_chat_template(to_messages(conversation, text_only), tokenize=False)
    images = [] if text_only else [Image.open(p).convert("RGB") for p in conversation.images]
    batch = processor(text=[text], images=images or None, return_tensors="pt")
    return Sample(batch, family.response_mask(batch["input_ids"][0], processor.tokenizer))


class ConversationDataset(torch.utils.data.Dataset):
    """Validated conversations; items are rendered on access. `skipped` counts dropped records by reason."""

    def __init__(
        self,
        path: str | Path,
        processor: ProcessorMixin,
        family: Family,
        image_root: str | Path | None = None,
        max_length: int = 2048,
        progress: bool = True,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FastDVLMError(f"data file not found: {path}")
        root = Path(image_root) if image_root is not None else path.parent
        self.processor, self.family, self.max_length = processor, family, max_length
        self.text_only = False  # see `text_only_view`
        self.skipped: Counter[str] = Counter()
        self.too_long: set[int] = set()
        self.conversations: list[Conversation] = []
        for record in tqdm(
            read_records(path), desc=f"checking {path.name}", disable=not progress, leave=False
        ):
            try:
                self.conversations.append(parse_record(record, root))
            except BadRecord as reason:
                self.skipped[str(reason)] += 1
        if not self.conversations:
            raise FastDVLMError(
                f"no usable records in {path} (skipped: {dict(self.skipped) or 'none found'})"
            )

    def text_only_view(self) -> ConversationDataset:
        """The same validated records, rendered without their images (two-stage stage 1)."""
        view = copy.copy(self)
        view.text_only, view.too_long = True, set()
        return view

    def __len__(self) -> int:
        return len(self.conversations)

    def text_lengths(self) -> list[int]:
        """Characters of text per record: a cheap stand-in for token counts when grouping by length."""
        return [sum(len(user) + len(answer) for user, answer in c.turns) for c in self.conversations]

    def __getitem__(self, index: int) -> Sample | None:
        """The rendered sample, or None (counted as skipped) if it exceeds `max_length` tokens."""
        sample = render(self.processor, self.family, self.conversations[index], self.text_only)
        if sample.input_ids.shape[0] > self.max_length:
            self.too_long.add(index)
            return None
        return sample

    def report(self) -> str:
        skipped = self.skipped + Counter({"longer than max_length": len(self.too_long)})
        total = sum(skipped.values())
        if not total:
            return f"{len(self)} records, none skipped"
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        return f"{len(self) - len(self.too_long)} usable records; skipped {total}: {reasons}"
