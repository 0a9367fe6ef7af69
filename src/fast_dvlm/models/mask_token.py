"""Give a model and its tokenizer the `[MASK]` token that block diffusion decodes from."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

MASK_TOKEN = "<|mask|>"


def add_mask_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str = MASK_TOKEN
) -> int:
    """Make sure `tokenizer` has a mask token with an embedding row in `model`; return its id.

    A tokenizer that already has a mask token keeps it (e.g. the released checkpoints' `|<MASK>|`).
    Otherwise the token gets the next free id. Where the embedding matrix is padded beyond the
    tokenizer (Qwen2.5: 151665 tokens, 151936 rows) that row is reused; otherwise the matrix grows.
    A newly claimed row starts at the mean of the real token embeddings, so the first masked inputs
    sit inside the distribution the model knows. Calling this twice changes nothing.
    """
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": token})
        new_token = True
    else:
        new_token = False
    mask_id = tokenizer.mask_token_id
    embeddings = model.get_input_embeddings()
    rows = embeddings.num_embeddings
    if mask_id >= rows:
        model.resize_token_embeddings(mask_id + 1, mean_resizing=True)
    elif new_token:
        with torch.no_grad():
            embeddings.weight[mask_id] = embeddings.weight[:mask_id].mean(0)
    return mask_id
