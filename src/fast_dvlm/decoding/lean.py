"""The lean decoding path: the text model's decoder layers run as one short loop over their own
weights, with a preallocated KV cache written in place (gpt-fast's shape of a decode step).

Why: on a small model most of a transformers forward is Python around the maths (per-layer module
calls, mask building, cache objects; `benchmarks/results/decode_profile.md`). This loop does the
same arithmetic in the same order as transformers' eager Qwen layers with SDPA attention, and is
checked against them (tests/test_speed_path.py): hidden states to float rounding, answers token for token.

- KV cache: per layer a `[rows, kv_heads, capacity, head_dim]` key and value buffer, one row per
  sequence (one for `generate`, one per batch-mate for `generate_batch` and the server), each row
  with its own length; a pass writes its keys at `length .. length+n` and attends over the view
  `[:length+n]`; rollback is setting the row's length (O(1)). The buffers double when full (one copy).
  A `LeanSlot` is one row seen as a cache of its own: what a `Session` holds.
- Batched passes (`forward_rows`): rows 0 .. r-1 together, each with its own new tokens (padded to
  the longest) after its own length, under a `[r, 1, m, end]` mask that hides every key past the
  row's own length; a row's keys and values never meet another row's (attention is per row).
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
from transformers import Cache

from ..conversion.attention import additive_mask, causal_allowed


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen RMSNorm, op for op (fp32 statistics, weight applied in the input dtype)."""
    return normed(norm.weight, norm.variance_epsilon, x)


def normed(weight: torch.Tensor, eps: float, x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def direct(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain `nn.Linear` (plain parameters, no hooks) as `F.linear` over its own parameters, with
    no module call (a tenth of a small model's decoding time is module-call overhead); anything else
    (an FP8 linear, a torchao tensor-subclass weight, a hooked module) as the module itself."""
    plain = type(module) is nn.Linear and type(module.weight) is nn.Parameter
    wrapped = "forward" in vars(module)  # accelerate's hooks (offloading) replace the instance's forward
    if not plain or wrapped or module._forward_hooks or module._forward_pre_hooks:
        return module
    weight, bias = module.weight, module.bias
    return lambda x: F.linear(x, weight, bias)


class LeanLayer:
    """One decoder layer's parts, looked up once: what `_layers` calls, pass after pass. It holds
    the modules' own parameter objects (`.to(device)` updates them in place); a module or weight
    replaced afterwards (quantisation) is seen only by lean models built after it, so quantise
    before decoding (a server's batch lives as long as the server)."""

    def __init__(self, layer: nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (
            direct(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # Qwen3
        self.scaling = attn.scaling
        self.gate, self.up, self.down = direct(mlp.gate_proj), direct(mlp.up_proj), direct(mlp.down_proj)
        self.act = mlp.act_fn
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        self.input_norm, self.post_norm = ((n.weight, n.variance_epsilon) for n in norms)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x` ([1, H, n, d]) with `cos`/`sin` ([1, 1, n, d]), as transformers applies it."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


class LeanTextModel:
    """A transformers Qwen-style text model's layers with a preallocated cache. Holds no weights of
    its own: it reads the modules' parameters (`LeanLayer`), as they are when it is built."""

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
        """`position_ids` turns 1-D positions `[n]` into what the model's rotary embedding takes.
        The buffers start with one row; `slot` adds rows on demand."""
        self.model = text_model
        self.layers = [LeanLayer(layer) for layer in text_model.layers]
        config = text_model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.position_ids = position_ids
        weight = text_model.norm.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.lengths = [0]  # positions held, per row
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cos = self.sin = torch.empty(0, self.head_dim, dtype=self.dtype, device=self.device)
        self._reserve(self.CAPACITY)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def _reserve(self, needed: int, rows: int | None = None) -> None:
        """Room for `needed` positions in each of `rows` rows (default: the rows there are). Zeros,
        not garbage: a batched pass reads keys past a row's length (masked, but NaN * 0 is NaN)."""
        rows = self.rows if rows is None else rows
        old_rows, capacity = (self.keys[0].shape[0], self.capacity) if self.keys else (0, 0)
        if needed <= capacity and rows <= old_rows:
            return
        new = max(needed, 2 * capacity, self.CAPACITY) if needed > capacity else capacity
        shape = (max(rows, old_rows), self.kv_heads, new, self.head_dim)
        for store in (self.keys, self.values):
            for i in range(len(self.layers)):
                buffer = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if i < len(store):
                    buffer[:old_rows, :, :capacity] = store[i]
                    store[i] = buffer
                else:
                    store.append(buffer)
        self.lengths += [0] * (shape[0] - len(self.lengths))

    def slot(self, row: int) -> LeanSlot:
        """Row `row` as a cache of its own, emptied (rows are added as needed)."""
        self._reserve(self.capacity, row + 1)
        self.lengths[row] = 0
        return LeanSlot(self, row)

    def move(self, source: int, target: int) -> None:
        """Copy row `source`'s cache into row `target` (a batch closing the gap a sequence left)."""
        length = self.lengths[source]
        for store in (self.keys, self.values):
            for buffer in store:
                buffer[target, :, :length] = buffer[source, :, :length]
        self.lengths[target] = length

    def rope(self, positions: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[1, 1, n, d]` of 1-D `positions` `[n]` (`[r, 1, m, d]` of `[r, m]`), all below
        `upto`, from the table."""
        if upto > self.cos.shape[0]:
            size = max(upto, 2 * self.cos.shape[0], self.CAPACITY)
            every = self.position_ids(torch.arange(size, device=self.device))
            probe = torch.empty(1, 1, 1, dtype=self.dtype, device=self.device)
            cos, sin = self.model.rotary_emb(probe, every)  # [1, size, d]
            self.cos, self.sin = cos[0], sin[0]
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 1:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]

    def load(self, cache: Cache, row: int = 0) -> None:
        """Copy a transformers cache (a prefill run through the model itself) into row `row`."""
        length = cache.get_seq_length()
        self._reserve(length)
        for i, layer in enumerate(cache.layers):
            self.keys[i][row, :, :length] = layer.keys[0]
            self.values[i][row, :, :length] = layer.values[0]
        self.lengths[row] = length

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
        row: int = 0,
    ) -> torch.Tensor:
        """Run `embeds` ([1, n, D]) after row `row`'s cached positions; their keys and values are kept.

        `mask`: additive `[1, 1, n, length + n]`, or None for causal. Returns the final-norm hidden
        states `[1, n, D]`.
        """
        n, start = embeds.shape[1], self.lengths[row]
        end = start + n
        self._reserve(end)
        is_causal = False
        if mask is None and n > 1:
            if start == 0:
                is_causal = True  # a fresh causal pass: SDPA's own causal mask, as transformers uses
            else:
                mask = self.causal_mask(torch.tensor([start]), n, end)
        rows = slice(row, row + 1)

        def write(store: torch.Tensor, new: torch.Tensor) -> None:
            store[rows, :, start:end] = new

        hidden = self._layers(embeds, cos, sin, mask, is_causal, rows, end, write)
        self.lengths[row] = end
        return hidden

    def forward_rows(
        self,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        counts: list[int],
        first: int = 0,
    ) -> torch.Tensor:
        """One pass of rows `first` .. `first`+r-1 together (0 .. r-1 by default; a batch's joining
        prompts sit after its running rows): row b's `counts[b]` new tokens (`embeds` `[r, m, D]`,
        padded to the longest, m) after its own cached positions; their keys are kept.

        `mask`: additive `[r, 1, m, end]` (end: the longest row's length after the pass), which must
        hide from each row every key at or past its own new length (`causal_mask` does). The padding
        tokens' keys land past the row's new length, where nothing reads them before they are
        overwritten. Returns the final-norm hidden states `[r, m, D]`.
        """
        r, m = embeds.shape[:2]
        starts = torch.tensor(self.lengths[first : first + r], device=self.device)
        end = mask.shape[-1]
        self._reserve(int(starts.max()) + m)
        row_index = torch.arange(first, first + r, device=self.device)[:, None].expand(r, m)
        slot_index = starts[:, None] + torch.arange(m, device=self.device)[None]  # [r, m]

        def write(store: torch.Tensor, new: torch.Tensor) -> None:
            store[row_index, :, slot_index] = new.transpose(1, 2)  # [r, m, kv, d]

        hidden = self._layers(embeds, cos, sin, mask, False, slice(first, first + r), end, write)
        for b, n in enumerate(counts):
            self.lengths[first + b] += n
        return hidden

    def causal_mask(self, starts: torch.Tensor, m: int, end: int) -> torch.Tensor:
        """Additive `[r, 1, m, end]`: new token i of row b sees the keys up to its own index
        `starts[b] + i` and none after (`causal_allowed`, for many rows at once)."""
        keys = torch.arange(end, device=self.device)
        queries = starts.to(self.device)[:, None] + torch.arange(m, device=self.device)[None]  # [r, m]
        return additive_mask(causal_allowed(queries, keys), self.dtype)

    def _layers(
        self,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        rows: slice,
        end: int,
        write: Callable[[torch.Tensor, torch.Tensor], None],
    ) -> torch.Tensor:
        """The decoder layers over `embeds` `[r, n, D]`: `write` stores each layer's new keys and
        values (`[r, kv, n, d]`) into its buffers, attention reads buffer rows `rows` up to `end`."""
        r, n = embeds.shape[:2]
        if mask is not None:
            mask = mask.to(self.dtype)
        h = embeds
        for i, layer in enumerate(self.layers):
            x = normed(*layer.input_norm, h)
            q = layer.q(x).view(r, n, -1, self.head_dim)
            k = layer.k(x).view(r, n, -1, self.head_dim)
            if layer.q_norm is not None:  # Qwen3: per-head norms before the rotation
                q, k = layer.q_norm(q), layer.k_norm(k)
            q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
            keys, values = self.keys[i], self.values[i]
            write(keys, k)
            write(values, layer.v(x).view(r, n, -1, self.head_dim).transpose(1, 2))
            out = F.scaled_dot_product_attention(
                q, keys[rows, :, :end], values[rows, :, :end], attn_mask=mask, scale=layer.scaling,
                is_causal=is_causal, enable_gqa=self.heads != self.kv_heads,
            )  # fmt: skip
            h = h + layer.o(out.transpose(1, 2).reshape(r, n, -1))
            x = normed(*layer.post_norm, h)
            h = h + layer.down(layer.act(layer.gate(x)) * layer.up(x))
        return rms_norm(self.model.norm, h)


class LeanSlot:
    """One row of a `LeanTextModel`: the cache a `Session` reads and writes, as if it were alone."""

    def __init__(self, model: LeanTextModel, row: int) -> None:
        self.model = model
        self.row = row  # changes when a batch moves this sequence to close a gap

    @property
    def length(self) -> int:
        return self.model.lengths[self.row]

    def truncate(self, keep: int) -> None:
        """Forget every position from `keep` on: O(1), the buffers are simply overwritten later."""
        self.model.lengths[self.row] = keep

    def load(self, cache: Cache) -> None:
        self.model.load(cache, self.row)

    def rope(self, positions: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.rope(positions, upto)

    def prompt_rope(
        self, embeds: torch.Tensor, lm_position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.prompt_rope(embeds, lm_position_ids)

    def forward(
        self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self.model.forward(embeds, cos, sin, mask, self.row)
