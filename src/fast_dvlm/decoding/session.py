"""One request's decoding state: the text model, its KV cache, the tokens committed so far.

Positions follow one rule: the token at sequence index i (prompt tokens first, then generated
ones) has rotary position `i + position_offset` in every row. The offset is 0 for 1-D RoPE; for
M-RoPE it is what the image grids shifted text positions by, so decoding continues exactly where
the prompt's 3-row position ids left off.

Blocks. The session records a block id for every cached position, for the block-causal clean
stream (Fast-dLLM v2): a causal prompt gives each position its own id, each pass a new, larger id.
Ids are only ever compared, so a rolled-back pass may leave a gap; `next_block` is a plain counter.

Device. Ids, positions, block ids and masks live on the model's device and are built there from
Python ints, so a pass copies nothing from the host but the token ids (asynchronously): the only
host syncs left are the ones an algorithm needs to decide what to keep.
`pending` holds the known tokens of the block being decoded that are not cached yet: the seed
(the last committed token), or, with blocks aligned to absolute positions, the prompt's last partial
block.

With `use_cache=False` the session keeps no KV cache: every pass recomputes the whole prefix
(prompt and every token a cached pass would have kept) causally. It is slow and exists so tests can
check that the cache holds exactly what a fresh causal pass would compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from ..conversion.attention import CLEAN, Tokens, additive_mask, attention_allowed
from ..errors import FastDVLMError
from ..models.family import Family, LMInputs
from ..settings import CleanAttention
from .lean import LeanSlot, LeanTextModel

ENGINES = ("lean", "transformers")


def rope_position_ids(family: Family, positions: torch.Tensor) -> torch.Tensor:
    """1-D rotary positions `[n]` in the form the text model's rotary embedding takes."""
    return family.lm_position_ids(positions.view(1, 1, -1).expand(family.position_rows, 1, -1))


def lean_runs(text_model: torch.nn.Module, use_cache: bool, engine: str) -> bool:
    """Whether a session over `text_model` decodes on the lean path."""
    return use_cache and engine == "lean" and LeanTextModel.supports(text_model)


@dataclass
class PromptPass:
    """The prompt's pass into the cache (`Session.prompt`): all of it, or its complete blocks."""

    inputs: LMInputs  # [1, n, D] embeddings, [R, 1, n] positions, family kwargs
    mask: torch.Tensor | None  # additive [1, 1, n, n]; None: causal
    block_ids: torch.Tensor  # [n], the block id of each prompt position
    next_block: int  # the id of the first pass after it


class Session:
    def __init__(
        self,
        model: PreTrainedModel,
        family: Family,
        use_cache: bool = True,
        clean_attention: CleanAttention = "causal",
        engine: str = "lean",
        slot: LeanSlot | None = None,
    ) -> None:
        """`slot`: a row of a shared lean cache (a batch's), used instead of a cache of its own."""
        self.family = family
        self.clean_attention = clean_attention
        self.text_model = family.language_model(model)
        self.lm_head = family.lm_head(model)
        self.embed_tokens = model.get_input_embeddings()
        self.dtype = self.embed_tokens.weight.dtype
        self.device = self.embed_tokens.weight.device  # ids, positions and masks move here; logits stay
        self.use_cache = use_cache
        self.lean: LeanSlot | None = slot  # the lean path (decoding/lean.py) where it runs this model
        if slot is None and lean_runs(self.text_model, use_cache, engine):
            self.lean = LeanTextModel(self.text_model, partial(rope_position_ids, family)).slot(0)
        elif engine not in ENGINES:
            raise FastDVLMError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.cache = DynamicCache(config=family.text_config(model)) if use_cache and not self.lean else None
        self.prefix: LMInputs | None = None  # without a cache: everything a cache would hold
        self.position_offset = 0
        self.prompt_len = 0
        self.tokens: list[int] = []  # committed answer tokens; the last one is not in the cache yet
        self.pending: list[int] = []  # known tokens from the current block's start, not cached yet
        self.blocks = torch.empty(
            0, dtype=torch.long, device=self.device
        )  # per cached position, non-decreasing
        self.next_block = 0  # the id the next pass gets: larger than every cached one
        self.nfe = 0  # every language-model pass, prefill included
        self.prefill_nfe = 0
        self.batch_rows = 1  # answers whose passes run as one with this one's (set by its Batch)

    @property
    def cache_len(self) -> int:
        """Number of sequence positions whose keys and values are held (prompt + committed)."""
        if self.lean is not None:
            return self.lean.length
        if self.use_cache:
            return self.cache.get_seq_length()
        return self.prefix.inputs_embeds.shape[1]

    def prefill(
        self, inputs: LMInputs, prompt_ids: torch.Tensor | None = None, aligned_block: int | None = None
    ) -> torch.Tensor | None:
        """Run the prompt (vision included) into the cache; the logits of its last position.

        `aligned_block=B` (Fast-dLLM v2) aligns blocks to absolute positions: only the prompt's
        complete blocks are prefilled, block-causally; its last partial block (`prompt_ids` tail)
        becomes `pending`, the known start of the first answer block, and None is returned (the
        first answer token is decoded inside that block).
        """
        prompt = self.prompt(inputs, prompt_ids, aligned_block)
        if prompt is None:
            return None
        hidden = self._run(
            prompt.inputs.inputs_embeds, prompt.inputs.position_ids, prompt.mask, prompt.inputs.extra
        )
        return self.lm_head(hidden[0, -1:])[0] if self.prefilled(prompt) else None

    def prompt(
        self, inputs: LMInputs, prompt_ids: torch.Tensor | None = None, aligned_block: int | None = None
    ) -> PromptPass | None:
        """`prefill`'s first half: take the prompt's positions and pending tail; the pass that puts
        the rest into the cache (None: nothing to run). A batch runs many such passes as one."""
        self.prompt_len = length = inputs.inputs_embeds.shape[1]
        self.position_offset = int(inputs.position_ids.max()) + 1 - self.prompt_len
        full, block_ids = length, self.arange(0, length)  # causal: every position its own block
        if aligned_block is not None:
            full = length // aligned_block * aligned_block
            block_ids = self.arange(0, full) // aligned_block
            self.pending = prompt_ids[full:].tolist()
            if inputs.extra or not torch.equal(
                inputs.inputs_embeds[0, full:], self.embed_tokens(prompt_ids[full:])
            ):
                raise FastDVLMError("absolute block alignment needs a text-only prompt tail")
        prefix = LMInputs(inputs.inputs_embeds[:, :full], inputs.position_ids[..., :full], inputs.extra)
        if not self.use_cache:
            self.prefix = prefix
        if full == 0:
            return None
        mask = None
        if aligned_block is not None:
            tokens = Tokens.make(CLEAN, self.arange(0, full), block_ids)
            mask = additive_mask(attention_allowed(tokens, tokens, "block-causal"), self.dtype)
        next_block = full if aligned_block is None else full // aligned_block
        return PromptPass(prefix, mask, block_ids, next_block)

    def prefilled(self, prompt: PromptPass) -> bool:
        """`prefill`'s second half, once `prompt` has run: its block ids. True if the prompt's last
        position predicts the first answer token (its logits are wanted), False if a tail is pending."""
        self.prefill_nfe = 1
        self.blocks = prompt.block_ids
        self.next_block = prompt.next_block
        return not self.pending

    def arange(self, start: int, stop: int) -> torch.Tensor:
        """Sequence indices `start .. stop-1` on the model's device."""
        return torch.arange(start, stop, device=self.device)

    def next_positions(self, n: int) -> torch.Tensor:
        """Sequence indices of `n` tokens appended after the cache."""
        return self.arange(self.cache_len, self.cache_len + n)

    def ids(self, tokens: list[int]) -> torch.Tensor:
        """Token ids on the model's device, copied without waiting for the device's queue."""
        return torch.tensor(tokens).to(self.device, non_blocking=True)

    def cached_tokens(self, length: int | None = None) -> Tokens:
        """The first `length` cached positions as clean tokens. Block ids are shifted below zero, so
        every token of a new pass (block 0 upward) counts as later than all of them."""
        length = self.cache_len if length is None else length
        return Tokens.make(CLEAN, self.arange(0, length), self.blocks[:length] - self.next_block)

    def forward(
        self,
        token_ids: torch.Tensor,
        seq_index: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_rows: slice = slice(None),
    ) -> torch.Tensor:
        """Run `token_ids` ([n]) at sequence indices `seq_index` ([n]) on top of the cache.

        `attention_mask` ([1, 1, n, cache_len + n], additive float) says who sees whom; None means
        causal. Their keys and values are appended to the cache (roll back what is not kept).
        Returns the logits of `logits_rows` only: the output head is a large share of a pass, so
        callers ask for the rows they read.
        """
        token_ids = token_ids.to(self.device, non_blocking=True)
        seq_index = seq_index.to(self.device, non_blocking=True)
        embeds = self.embed_tokens(token_ids)[None]  # [1, n, D]
        if self.lean is not None:
            self.nfe += 1
            cos, sin = self.lean.rope(
                seq_index + self.position_offset, self.cache_len + self.position_offset + embeds.shape[1]
            )
            hidden = self.lean.forward(embeds, cos, sin, attention_mask)
            return self._after_pass(token_ids.shape[0], hidden, logits_rows)
        rows = self.family.position_rows
        positions = (seq_index + self.position_offset).view(1, 1, -1).expand(rows, 1, -1)
        if self.use_cache:
            hidden = self._run(embeds, positions, attention_mask, {})
        else:
            hidden = self._recompute(embeds, positions, attention_mask)
        return self._after_pass(token_ids.shape[0], hidden, logits_rows)

    def _after_pass(self, n: int, hidden: torch.Tensor, logits_rows: slice) -> torch.Tensor:
        """Record the pass's block id for its `n` new positions; the logits of `logits_rows`."""
        self.record_pass(n)
        return self.lm_head(hidden[0, logits_rows])

    def record_pass(self, n: int) -> None:
        """The pass's block id for its `n` new positions (a batched pass records each row's here)."""
        self.blocks = torch.cat([self.blocks, torch.full((n,), self.next_block, device=self.device)])
        self.next_block += 1

    def rollback(self, keep: int) -> None:
        """Forget every cached position from `keep` on."""
        drop = self.cache_len - keep
        if drop < 0:
            raise ValueError(f"cannot roll back to {keep}: only {self.cache_len} positions are cached")
        if drop == 0:
            return
        self.blocks = self.blocks[:keep]
        if self.lean is not None:
            self.lean.truncate(keep)
        elif self.use_cache:
            self.cache.crop(-drop)  # transformers 5.x: a negative count of positions to drop
        else:
            p = self.prefix
            self.prefix = LMInputs(p.inputs_embeds[:, :keep], p.position_ids[..., :keep], p.extra)

    def _run(
        self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, extra: dict
    ) -> Any:
        if self.lean is not None:  # the prompt: the lean loop, or transformers' (DeepStack) copied in
            if not extra:
                self.nfe += 1
                cos, sin = self.lean.prompt_rope(embeds, self.family.lm_position_ids(positions))
                return self.lean.forward(embeds, cos, sin, mask)
            self.cache = DynamicCache(config=self.text_model.config)
            try:
                return self._run_transformers(embeds, positions, mask, extra)
            finally:
                self.lean.load(self.cache)
                self.cache = None
        return self._run_transformers(embeds, positions, mask, extra)

    def _run_transformers(
        self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, extra: dict
    ) -> Any:
        self.nfe += 1
        out = self.text_model(
            inputs_embeds=embeds,
            position_ids=self.family.lm_position_ids(positions),
            attention_mask=None if mask is None else mask.to(self.device),
            past_key_values=self.cache,
            use_cache=self.use_cache,
            **extra,
        )
        return out.last_hidden_state

    def _recompute(
        self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """No-cache pass: run [prefix | new] from scratch; the causal prefix never sees the new tokens."""
        p, n = self.cache_len, embeds.shape[1]
        cached, new_tokens = self.cached_tokens(), Tokens.make(CLEAN, self.arange(p, p + n), 0)
        if mask is None:
            mask = additive_mask(attention_allowed(new_tokens, cached + new_tokens), self.dtype)
        prefix_rows = additive_mask(
            attention_allowed(cached, cached + new_tokens, self.clean_attention), self.dtype
        )
        full_mask = torch.cat([prefix_rows, mask], dim=2)  # [1, 1, p + n, p + n]
        full_embeds = torch.cat([self.prefix.inputs_embeds, embeds], dim=1)
        full_positions = torch.cat([self.prefix.position_ids, positions], dim=-1)
        extra = dict(self.prefix.extra)
        if "visual_pos_masks" in extra:  # DeepStack: vision positions lie in the prompt only
            vision = extra["visual_pos_masks"]
            extra["visual_pos_masks"] = torch.cat(
                [vision, vision.new_zeros(1, p + n - vision.shape[1])], dim=1
            )
        hidden = self._run(full_embeds, full_positions, full_mask, extra)
        self.prefix = LMInputs(full_embeds, full_positions, self.prefix.extra)
        return hidden[:, p:]
