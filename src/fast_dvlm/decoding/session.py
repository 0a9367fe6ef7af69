"""One request's decoding state: the text model, its KV cache, the tokens committed so far.

Positions follow one rule: the token at sequence index i (prompt tokens first, then generated
ones) has rotary position `i + position_offset` in every row. The offset is 0 for 1-D RoPE; for
M-RoPE it is what the image grids shifted text positions by, so decoding continues exactly where
the prompt's 3-row position ids left off.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from ..models.family import Family, LMInputs


class Session:
    def __init__(self, model: PreTrainedModel, family: Family) -> None:
        self.family = family
        self.text_model = family.language_model(model)
        self.lm_head = family.lm_head(model)
        self.embed_tokens = model.get_input_embeddings()
        self.cache = DynamicCache(config=family.text_config(model))
        self.position_offset = 0
        self.prompt_len = 0
        self.tokens: list[int] = []  # committed answer tokens; the last one is not in the cache yet
        self.nfe = 0  # every language-model pass, prefill included
        self.trace: list[int] = []  # tokens committed by each decoding step after prefill

    @property
    def cache_len(self) -> int:
        return self.cache.get_seq_length()

    def prefill(self, inputs: LMInputs) -> torch.Tensor:
        """Causal pass over the whole prompt (vision included) into the cache; logits of its last position."""
        self.prompt_len = inputs.inputs_embeds.shape[1]
        self.position_offset = int(inputs.position_ids.max()) + 1 - self.prompt_len
        hidden = self._run(inputs.inputs_embeds, inputs.position_ids, None, inputs.extra)
        return self.lm_head(hidden[0, -1:])[0]

    def forward(
        self,
        token_ids: torch.Tensor,
        seq_index: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
        logits_from: int = 0,
    ) -> torch.Tensor:
        """Run `token_ids` ([n]) at sequence indices `seq_index` ([n]) on top of the cache.

        `attention_bias` ([1, 1, n, cache_len + n], additive float) says who sees whom; None means
        causal. Returns logits `[n - logits_from, V]` (skip the head where logits are not needed).
        """
        embeds = self.embed_tokens(token_ids)[None]  # [1, n, D]
        rows = self.family.position_rows
        positions = (seq_index + self.position_offset).view(1, 1, -1).expand(rows, 1, -1)
        hidden = self._run(embeds, positions, attention_bias, {})
        return self.lm_head(hidden[0, logits_from:])

    def _run(
        self, embeds: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor | None, extra: dict
    ) -> torch.Tensor:
        self.nfe += 1
        out = self.text_model(
            inputs_embeds=embeds,
            position_ids=self.family.lm_position_ids(positions),
            attention_mask=bias,
            past_key_values=self.cache,
            use_cache=True,
            **extra,
        )
        return out.last_hidden_state
