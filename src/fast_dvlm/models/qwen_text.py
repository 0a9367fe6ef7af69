"""Text-only Qwen2 (the base of Fast-dLLM v2): 1-D RoPE, no vision tower.

It runs through the same decoding engine as the VLM families; its "processor" is the tokenizer
behind a thin adapter that refuses images with one clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..errors import FastDVLMError
from .chat_template import qwen_chat_template
from .family import Family, LMInputs, TinySize
from .qwen_vl import qwen_text_config


class TextProcessor:
    """The processor interface `encode_prompt` and the trainer use, for a model without images."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text: list[str], images: Any = None, return_tensors: str = "pt") -> BatchFeature:
        if images:
            raise FastDVLMError("this is a text-only model: it cannot take images")
        return BatchFeature(dict(self.tokenizer(text, return_tensors=return_tensors)))

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)


class Qwen2TextFamily(Family):
    name = "qwen2"
    image_token = ""  # none: no token of the prompt is ever a vision position
    special_tokens = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    chat_template = qwen_chat_template("")
    position_rows = 1

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return Qwen2ForCausalLM

    def embed(self, model: PreTrainedModel, batch: BatchFeature) -> LMInputs:
        if batch.get("pixel_values") is not None:
            raise FastDVLMError("this is a text-only model: it cannot take images")
        input_ids = batch["input_ids"]
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return LMInputs(model.get_input_embeddings()(input_ids), positions.unsqueeze(0), {})

    def language_model(self, model: PreTrainedModel) -> torch.nn.Module:
        return model.model

    def text_config(self, model: PreTrainedModel) -> Any:
        return model.config

    def lm_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        return position_ids[0]

    def image_token_id(self, model: PreTrainedModel) -> int:
        return -1

    def load_processor(self, path: Any) -> TextProcessor:
        return TextProcessor(AutoTokenizer.from_pretrained(path, local_files_only=True))

    def tiny_config(self, tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int) -> Qwen2Config:
        text = qwen_text_config(tokenizer, size, vocab_size)
        text["rope_parameters"].pop("mrope_section")
        return Qwen2Config(**text)

    def tiny_processor(self, tokenizer: PreTrainedTokenizerBase, size: TinySize) -> TextProcessor:
        return TextProcessor(tokenizer)
