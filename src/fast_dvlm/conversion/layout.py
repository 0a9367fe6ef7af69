"""Training rows: `[noisy copy 1 | noisy copy 2 | clean stream]`, padded into a batch: the paper's
vision-efficient concatenation.

The clean stream is the whole sequence with vision features, computed once. A noisy copy holds the
response tokens only, some replaced by [MASK], at the position ids of the same tokens in the clean
stream (3-row M-RoPE gathered per row, so rows with different images stay right). Noisy prompt
tokens could be included (`text`, the paper's vision-efficient layout) or even noisy vision tokens
(`full`, vision in both streams); under the attention rules nothing ever reads them, so all three
layouts give the same loss, and `response` is the cheapest. Only without auto-truncation does a
block hold prompt text beside response tokens: `response` then keeps that text too (as `text` would),
since the block's noisy tokens read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..settings import CleanAttention
from .attention import CLEAN, Tokens, additive_mask, attention_allowed

NoisyLayout = Literal["response", "text", "full"]


@dataclass
class Row:
    """One sample laid out for the conversion forward pass; indices are row-local."""

    embeds: torch.Tensor  # [T, D]
    positions: torch.Tensor  # [R, T]
    tokens: Tokens  # stream, position, block of each of the T tokens
    vision: torch.Tensor  # [T] bool: the clean stream's vision tokens
    diff_pred: torch.Tensor  # [n_d] rows whose logits predict a masked token (token shift)
    diff_target: torch.Tensor  # [n_d] the masked tokens' ids
    ar_pred: torch.Tensor  # [n_a] clean rows whose logits predict the next response token
    ar_target: torch.Tensor  # [n_a]
    n_maskable: int  # normaliser of the diffusion loss (each maskable token is masked once per pair)


def build_row(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    input_ids: torch.Tensor,
    response: torch.Tensor,
    vision: torch.Tensor,
    blocks: torch.Tensor,
    noise: list[torch.Tensor],
    mask_embedding: torch.Tensor,
    layout: NoisyLayout = "response",
) -> Row:
    """Lay out one sample. `embeds` [L, D] and `positions` [R, L] are its clean stream; `noise`
    holds one `[L]` mask per noisy copy; `mask_embedding` [D] is the [MASK] token's embedding."""
    length = input_ids.shape[0]
    answer_blocks = torch.isin(blocks, blocks[response]) & ~vision  # = response with auto-truncation
    in_noisy = {"response": answer_blocks, "text": ~vision, "full": torch.ones_like(response)}[layout]
    kept = in_noisy.nonzero().flatten()  # clean indices copied into each noisy stream
    parts, pos_parts, token_parts, diff_pred, diff_target = [], [], [], [], []
    offset = 0
    for copy, masked in enumerate(noise, start=1):
        parts.append(torch.where(masked[kept, None].to(embeds.device), mask_embedding, embeds[kept]))
        pos_parts.append(positions[:, kept])
        token_parts.append(Tokens.make(copy, kept, blocks[kept]))
        row_of = torch.full((length,), -1, dtype=torch.long)
        row_of[kept] = offset + torch.arange(kept.shape[0])
        targets = masked.nonzero().flatten()  # never a block's first token, so i - 1 is in its block
        diff_pred.append(row_of[targets - 1])
        diff_target.append(input_ids[targets])
        offset += kept.shape[0]
    parts.append(embeds)
    pos_parts.append(positions)
    token_parts.append(Tokens.make(CLEAN, torch.arange(length), blocks))
    answered = response.nonzero().flatten()
    answered = answered[answered > 0]
    tokens = token_parts[0]
    for part in token_parts[1:]:
        tokens = tokens + part
    nothing = torch.zeros(0, dtype=torch.long)
    return Row(
        embeds=torch.cat(parts),
        positions=torch.cat(pos_parts, dim=1),
        tokens=tokens,
        vision=torch.cat([torch.zeros(offset, dtype=torch.bool), vision]),
        diff_pred=torch.cat([nothing, *diff_pred]),
        diff_target=torch.cat([nothing, *diff_target]),
        ar_pred=offset + answered - 1,
        ar_target=input_ids[answered],
        n_maskable=int(sum(int(m.sum()) for m in noise)),
    )


@dataclass
class RowBatch:
    """Rows padded to one length T; prediction indices are flat over [B * T]."""

    embeds: torch.Tensor  # [B, T, D]
    positions: torch.Tensor  # [R, B, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] additive
    vision: torch.Tensor  # [B, T]
    diff_pred: torch.Tensor
    diff_target: torch.Tensor
    diff_sample: torch.Tensor  # which row each diffusion target belongs to
    ar_pred: torch.Tensor
    ar_target: torch.Tensor
    ar_sample: torch.Tensor
    n_maskable: torch.Tensor  # [B]
    n_answered: torch.Tensor  # [B]


def stack_rows(
    rows: list[Row], clean_attention: CleanAttention = "causal", device: torch.device | str | None = None
) -> RowBatch:
    """Pad rows to a common length. A padding token attends only to itself and nothing attends to it.

    Everything lands on `device` (default: the embeddings'); the `[B, 1, T, T]` masks are built there,
    since at real lengths they are the largest tensors of the layout."""
    width = max(r.embeds.shape[0] for r in rows)
    dtype = rows[0].embeds.dtype
    device = rows[0].embeds.device if device is None else device
    embeds, positions, masks, vision = [], [], [], []
    for r in rows:
        n, pad = r.embeds.shape[0], width - r.embeds.shape[0]
        embeds.append(torch.nn.functional.pad(r.embeds, (0, 0, 0, pad)))
        positions.append(torch.nn.functional.pad(r.positions, (0, pad)))
        vision.append(torch.nn.functional.pad(r.vision, (0, pad)))
        allowed = torch.eye(width, dtype=torch.bool, device=device)
        tokens = r.tokens.to(device)
        allowed[:n, :n] = attention_allowed(tokens, tokens, clean_attention)
        masks.append(additive_mask(allowed, dtype)[0])

    def flat(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.cat([getattr(r, name) + i * width for i, r in enumerate(rows)])
        sample = torch.cat([torch.full_like(getattr(r, name), i) for i, r in enumerate(rows)])
        return index.to(device), sample.to(device)

    diff_pred, diff_sample = flat("diff_pred")
    ar_pred, ar_sample = flat("ar_pred")
    return RowBatch(
        embeds=torch.stack(embeds).to(device),
        positions=torch.stack(positions, dim=1).to(device),
        attention_mask=torch.stack(masks),
        vision=torch.stack(vision).to(device),
        diff_pred=diff_pred,
        diff_target=torch.cat([r.diff_target for r in rows]).to(device),
        diff_sample=diff_sample,
        ar_pred=ar_pred,
        ar_target=torch.cat([r.ar_target for r in rows]).to(device),
        ar_sample=ar_sample,
        n_maskable=torch.tensor([r.n_maskable for r in rows], device=device),
        n_answered=torch.tensor([r.ar_pred.shape[0] for r in rows], device=device),
    )
