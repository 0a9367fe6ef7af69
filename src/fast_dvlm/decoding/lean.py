"""The lean decoding path: the text model's decoder layers run as one short loop over their own
weights, with a preallocated KV cache written in place (gpt-fast's shape of a decode step).

Why: on a small model most of a transformers forward is Python around the maths (per-layer module
calls, mask building, cache objects; `benchmarks/results/decode_profile.md`). This loop does the
same arithmetic in the same order as transformers' eager Qwen layers with SDPA attention, and is
checked against them (tests/test_lean.py): hidden states to float rounding, answers token for token.

- KV cache: per layer a `[1, kv_heads, capacity, head_dim]` key and value buffer; a pass writes
  its keys at `length .. length+n` and attends over the view `[:length+n]`; rollback is setting
  `length` (O(1)). The buffers double when full (one copy).
- RoPE: one cos/sin table per position, built once for the positions a session reaches (decoding
  positions are 1-D: every M-RoPE row holds the same index after the prompt), read by index per pass,
  shared by every layer. The prompt, whose M-RoPE rows differ at the image, runs through the
  model's own rotary embedding.
- Masks: the caller's additive mask, built once per pass (once per block where the block allows);
  None is causal, and a 1-token pass needs no mask at all.

`LeanTextModel.supports` says which text models it runs (the Qwen2 / Qwen2-VL / Qwen2.5-VL /
Qwen3-VL decoder layers with full attention); for any other the session keeps transformers' path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen RMSNorm, op for op (fp32 statistics, weight applied in the input dtype)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x` ([1, H, n, d]) with `cos`/`sin` ([1, 1, n, d]), as transformers applies it."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


class LeanTextModel:
    """A transformers Qwen-style text model's layers with a preallocated cache. Holds no weights of
    its own: it reads the modules' parameters, so quantised or moved weights are seen as they are."""

    CAPACITY = 512  # initial positions per buffer; doubled when a pass would overflow

    @staticmethod
    def supports(text_model: nn.Module) -> bool:
        config = getattr(text_model, "config", None)
        layers = getattr(text_model, "layers", None)
        if config is None or layers is None or not hasattr(text_model, "rotary_emb"):
            return False
        if getattr(config, "_attn_implementation", None) != "sdpa":
            return False
        if getattr(config, "use_sliding_window", False) or any(
            t != "full_attention" for t in getattr(config, "layer_types", None) or ()
        ):
            return False
        for layer in layers:
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            if attn is None or mlp is None or not hasattr(layer, "post_attention_layernorm"):
                return False
            if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
                return False
            if not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                return False
        return True

    def __init__(self, text_model: nn.Module, position_ids: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """`position_ids` turns 1-D positions `[n]` into what the model's rotary embedding takes."""
        self.model = text_model
        self.layers = list(text_model.layers)
        config = text_model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.position_ids = position_ids
        weight = text_model.norm.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.length = 0  # positions held
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cos = self.sin = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self._reserve(self.CAPACITY)

    def _reserve(self, needed: int) -> None:
        capacity = self.keys[0].shape[2] if self.keys else 0
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity, self.CAPACITY)
        shape = (1, self.kv_heads, new, self.head_dim)
        for store in (self.keys, self.values):
            for i in range(len(self.layers)):
                buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
                if i < len(store):
                    buffer[:, :, : self.length] = store[i][:, :, : self.length]
                    store[i] = buffer
                else:
                    store.append(buffer)

    def rope(self, positions: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[1, 1, n, d]` of 1-D `positions` (all below `upto`), from the table."""
        if upto > self.cos.shape[0]:
            size = max(upto, 2 * self.cos.shape[0], self.CAPACITY)
            every = self.position_ids(torch.arange(size, device=self.device))
            probe = torch.empty(1, 1, 1, dtype=self.dtype, device=self.device)
            cos, sin = self.model.rotary_emb(probe, every)  # [1, size, d]
            self.cos, self.sin = cos[0], sin[0]
        return self.cos[positions][None, None], self.sin[positions][None, None]

    def truncate(self, keep: int) -> None:
        """Forget every position from `keep` on: O(1), the buffers are simply overwritten later."""
        self.length = keep

    def load(self, cache) -> None:
        """Copy a transformers cache (a prefill run through the model itself) into the buffers."""
        length = cache.get_seq_length()
        self._reserve(length)
        for i, layer in enumerate(cache.layers):
            self.keys[i][:, :, :length] = layer.keys
            self.values[i][:, :, :length] = layer.values
        self.length = length

    def prompt_rope(
        self, embeds: torch.Tensor, lm_position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[1, 1, n, d]` of a prompt's own (M-RoPE) positions, by the model's rotary embedding."""
        cos, sin = self.model.rotary_emb(embeds, lm_position_ids)
        return cos[:, None], sin[:, None]

    def forward(
        self,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run `embeds` ([1, n, D]) after the cached positions; their keys and values are kept.

        `mask`: additive `[1, 1, n, length + n]`, or None for causal. Returns the final-norm hidden
        states `[1, n, D]`.
        """
        n, start = embeds.shape[1], self.length
        end = start + n
        self._reserve(end)
        is_causal = False
        if mask is None and n > 1:
            if start == 0:
                is_causal = True  # a fresh causal pass: SDPA's own causal mask, as transformers uses
            else:
                allowed = (
                    torch.arange(end, device=self.device)[None]
                    <= torch.arange(start, end, device=self.device)[:, None]
                )
                mask = torch.zeros(n, end, dtype=self.dtype, device=self.device).masked_fill_(
                    ~allowed, torch.finfo(self.dtype).min
                )[None, None]
        if mask is not None:
            mask = mask.to(self.dtype)
        h = embeds
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = rms_norm(layer.input_layernorm, h)
            q = attn.q_proj(x).view(1, n, -1, self.head_dim)
            k = attn.k_proj(x).view(1, n, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head norms before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
            keys, values = self.keys[i], self.values[i]
            keys[:, :, start:end] = k
            values[:, :, start:end] = attn.v_proj(x).view(1, n, -1, self.head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], attn_mask=mask, scale=attn.scaling,
                is_causal=is_causal, enable_gqa=self.heads != self.kv_heads,
            )  # fmt: skip
            h = h + attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
            x = rms_norm(layer.post_attention_layernorm, h)
            mlp = layer.mlp
            h = h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        self.length = end
        return rms_norm(self.model.norm, h)
