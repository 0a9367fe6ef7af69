"""An offline byte-level BPE tokenizer, trained on the spot, for models built from scratch."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A small, fixed English corpus so that a default tiny tokenizer merges common words; the demo
# model trains its tokenizer on its own task text instead.
_WORDS = (
    "the a an is are was what which where how many colour color red green blue yellow black white "
    "circle square triangle star left right above below next to inside image picture chart bar line "
    "value number total answer question read text word yes no there shown in of on and or first "
    "second third largest smallest count sum step so final label part diagram form receipt price"
).split()


def default_corpus() -> list[str]:
    pairs = itertools.product(_WORDS, _WORDS[::7])
    return [f"{a} {b} {i % 100}." for i, (a, b) in enumerate(pairs)] + [" ".join(_WORDS)]


def train_bpe_tokenizer(
    special_tokens: Iterable[str],
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`; special tokens get the first ids, in the order given.

    Byte-level means any text round-trips, so a model trained on a small corpus still reads
    arbitrary user prompts.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus if corpus is not None else default_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos_token, pad_token=pad_token)
    tokenizer.chat_template = chat_template
    return tokenizer
