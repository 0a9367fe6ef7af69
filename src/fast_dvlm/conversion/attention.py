"""Who may attend to whom: the one definition used by training and by every decoding pass.

Every token carries three facts: its stream (0 = clean, the committed sequence; 1, 2, ... = noisy
copies of it with some response tokens replaced by [MASK], e.g. a complementary pair), its position
in the clean sequence, and its block id (blocks and prompt segments are numbered in sequence
order). The mask is the union of three parts:

- noisy -> noisy (N2N): same copy and same block only, both directions (a block is denoised jointly);
- noisy -> clean (N2C): clean tokens of strictly earlier blocks (the context a block decodes from);
- clean -> clean (C2C): token-level causal (Fast-dVLM: the KV cache equals an AR model's, and the AR
  loss stays valid), or block-causal (Fast-dLLM v2);
- clean -> noisy: never.

Training slices nothing: it builds the full [noisy | clean] matrix. A decoding pass asks the same
function with the cached tokens (clean, all in earlier blocks) and its new tokens as keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import CleanAttention, check_clean_attention

CLEAN, NOISY = 0, 1  # stream ids; further noisy copies are 2, 3, ...


@dataclass(frozen=True)
class Tokens:
    """Stream, position and block of a run of tokens, as parallel 1-D tensors."""

    stream: torch.Tensor  # long [n]: CLEAN, or the index of a noisy copy
    pos: torch.Tensor  # long [n], index in the clean sequence
    block: torch.Tensor  # long [n]

    @staticmethod
    def make(stream: int | torch.Tensor, pos: torch.Tensor, block: int | torch.Tensor) -> Tokens:
        n, device = pos.shape[0], pos.device  # everything on the positions' device: no copies per pass
        stream_t = torch.as_tensor(stream, dtype=torch.long, device=device).expand(n)
        block_t = torch.as_tensor(block, dtype=torch.long, device=device).expand(n)
        return Tokens(stream_t, pos.long(), block_t)

    def to(self, device: torch.device) -> Tokens:
        return Tokens(self.stream.to(device), self.pos.to(device), self.block.to(device))

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            torch.cat([self.stream, other.stream]),
            torch.cat([self.pos, other.pos]),
            torch.cat([self.block, other.block]),
        )

    def __len__(self) -> int:
        return self.pos.shape[0]


def attention_allowed(query: Tokens, key: Tokens, clean_attention: CleanAttention = "causal") -> torch.Tensor:
    """Boolean `[n_query, n_key]`: True where the query token may attend to the key token."""
    q_noisy, k_noisy = (query.stream != CLEAN)[:, None], (key.stream != CLEAN)[None, :]
    q_block, k_block = query.block[:, None], key.block[None, :]
    n2n = q_noisy & (query.stream[:, None] == key.stream[None, :]) & (q_block == k_block)
    n2c = q_noisy & ~k_noisy & (k_block < q_block)
    if check_clean_attention(clean_attention) == "causal":
        c2c_rule = causal_allowed(query.pos, key.pos)
    else:  # block-causal
        c2c_rule = k_block <= q_block
    c2c = ~q_noisy & ~k_noisy & c2c_rule
    return n2n | n2c | c2c


def causal_allowed(query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """The token-level causal rule: a query sees the keys at or before its own position.
    `query_pos` may carry leading batch dimensions (`[r, q]` against `[k]` gives `[r, q, k]`)."""
    return key_pos[..., None, :] <= query_pos[..., :, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[1, 1, q, k]` float mask to add to attention scores (`[r, 1, q, k]` from a batched `[r, q, k]`):
    0 where allowed, the dtype's minimum elsewhere.

    Additive float, never boolean: transformers' eager attention adds the mask to the scores, so
    a boolean one would be silently wrong there; the float form is right for every implementation.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.view(-1, 1, *allowed.shape[-2:])
