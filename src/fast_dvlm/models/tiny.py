"""Tiny models of each family's real architecture, built offline from hand-written configs.

Tests and benchmarks run on these: they go through exactly the code paths a real checkpoint does
(transformers model classes, real processors, chat templates), at a size a CPU runs in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedModel, ProcessorMixin

from .family import TinySize
from .mask_token import add_mask_token
from .registry import get_family
from .tokenizer import train_bpe_tokenizer

ROW_MULTIPLE = 64  # embedding rows are padded like real checkpoints, leaving a free row for [MASK]


def build_tiny_model(
    family_name: str,
    size: TinySize | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    min_embedding_rows: int = 0,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random model of `family_name` with its tokenizer (mask token included) and processor.

    `min_embedding_rows` pads the embedding and output head beyond the tokenizer, e.g. to give a
    benchmark model a head as wide as a real one (Qwen2.5: 151,936 rows).
    """
    family = get_family(family_name)
    size = size or TinySize()
    tokenizer = train_bpe_tokenizer(
        family.special_tokens, corpus, vocab_size=vocab_size, chat_template=family.chat_template
    )
    rows = -(-max(len(tokenizer) + 1, min_embedding_rows) // ROW_MULTIPLE) * ROW_MULTIPLE
    config = family.tiny_config(tokenizer, size, rows)
    for part in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if part is not None:
            part.initializer_range = size.init_std
    torch.manual_seed(seed)
    model = family.model_class(config).eval()
    family.init_tiny_weights(model)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in family.stop_tokens]
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = stop_ids[-1]
    processor = family.tiny_processor(tokenizer, size)
    add_mask_token(model, processor.tokenizer)
    return model, processor
