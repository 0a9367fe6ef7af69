"""The decoding interface: the base class owns the loop and the block passes; each algorithm
implements `step`.

A decoder holds its options only: everything one answer carries from step to step (its trace, a
draft) lives in its `DecodeState`, and its cache in its `Session`, so one decoder serves any number
of answers at once. A step never runs the model itself: it yields each pass it needs (`Pass`) and is
sent back that pass's logits, so whoever drives it decides how passes run: one at a time
(`Answer.stream`, for `generate` and `stream`) or together with other answers' passes in one
batched forward (`decoding/batch.py`, for `generate_batch` and the server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..conversion.attention import CLEAN, NOISY, Tokens, additive_mask, attention_allowed
from ..errors import FastDVLMError
from ..settings import (
    BLOCK_SIZE,
    SUB_BLOCK_SIZE,
    THRESHOLD,
    CleanAttention,
    check_clean_attention,
    validate_block_settings,
)
from .policy import DRAFT_POLICIES
from .session import ENGINES, Session


@dataclass(frozen=True)
class DecodeOptions:
    """What every algorithm is given; block settings are ignored by `ar`."""

    max_new_tokens: int
    stop_ids: frozenset[int]
    mask_id: int | None = None
    block_size: int = BLOCK_SIZE
    sub_block_size: int = SUB_BLOCK_SIZE
    threshold: float = THRESHOLD
    clean_attention: CleanAttention = "causal"
    draft_policy: str = "auto"  # speculative modes: "auto" sizes each step's verify pass (policy.py)
    engine: str = "lean"  # "lean" (decoding/lean.py, where the model allows) or "transformers"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FastDVLMError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.draft_policy not in DRAFT_POLICIES:
            raise FastDVLMError(f"draft_policy must be one of {DRAFT_POLICIES}, got {self.draft_policy!r}")
        if self.engine not in ENGINES:
            raise FastDVLMError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        validate_block_settings(self.block_size, self.sub_block_size, self.threshold)
        check_clean_attention(self.clean_attention)


@dataclass(frozen=True)
class StepTrace:
    """What one decoding step cost and gave: the numbers users plot."""

    tokens: int  # tokens committed
    passes: int  # language-model forward passes used


@dataclass(frozen=True)
class Pass:
    """One language-model pass a step asks for: `ids` at sequence indices `seq` after the cache,
    with the additive `mask` over [cache | ids] (None: causal); the logits of `rows` come back."""

    ids: torch.Tensor
    seq: torch.Tensor
    mask: torch.Tensor | None = None
    rows: slice = field(default_factory=lambda: slice(None))


Passes = Generator[Pass, torch.Tensor, list[int]]  # a step: asks for passes, returns what it commits
Decoding = Generator[Pass | list[int], torch.Tensor | None, None]  # an answer: passes and chunks


@dataclass
class DecodeState:
    """What one answer carries between steps besides its cache; algorithms that carry more (a
    draft, the accepted counts the policy reads) extend it."""

    trace: list[StepTrace] = field(default_factory=list)


class Decoder(ABC):
    """A decoding algorithm. `step` commits the tokens that follow the pending ones.

    Invariant between steps: the cache holds everything before the current block; `session.pending`
    holds the block's known start (the seed: the last committed token, or, with blocks aligned to
    absolute positions, the prompt's last partial block first). `step` decodes what follows the
    pending tokens, ending with the next seed, and leaves the invariant true again.
    """

    name: ClassVar[str]
    needs_mask_token: ClassVar[bool] = True
    State: ClassVar[type[DecodeState]] = DecodeState

    def __init__(self, options: DecodeOptions) -> None:
        if self.needs_mask_token and options.mask_id is None:
            raise FastDVLMError(f"mode {self.name!r} needs a mask token id; this model has none")
        self.options = options

    @abstractmethod
    def step(self, session: Session, state: DecodeState, budget: int) -> Passes:
        """Decode and return the tokens that follow the pending ones, yielding each pass it needs.
        Only the first `budget` will be used, so an algorithm may stop early once it knows them (or
        a stop token with nothing masked before it)."""

    def run(self, session: Session, state: DecodeState, first_logits: torch.Tensor | None) -> Decoding:
        """Yield committed tokens chunk by chunk, up to and including the first stop token, and
        between them the passes the steps need (each answered by sending back its logits).

        `first_logits` is the prefill's prediction of the first answer token, which seeds the first
        block; None when the prompt's tail is already pending (blocks aligned to absolute positions).
        """
        chunk = [] if first_logits is None else [int(first_logits.argmax())]
        while True:
            chunk = chunk[: self.options.max_new_tokens - len(session.tokens)]
            stop_at = self.first_stop(chunk)
            if stop_at is not None:
                chunk = chunk[: stop_at + 1]
            session.tokens.extend(chunk)
            if chunk:
                session.pending = [chunk[-1]]
                yield chunk
            if stop_at is not None or len(session.tokens) >= self.options.max_new_tokens:
                return
            passes_before = session.nfe
            chunk = yield from self.step(session, state, self.options.max_new_tokens - len(session.tokens))
            state.trace.append(StepTrace(len(chunk), session.nfe - passes_before))

    @property
    def sizes_steps(self) -> bool:
        """Whether the drafting policy sizes this answer's speculative steps: with "auto", where the
        clean stream is token-causal. A block-causal verify pass reads its whole block, so its length
        would change the answer; there every step drafts and verifies whole blocks."""
        return self.options.draft_policy == "auto" and self.options.clean_attention == "causal"

    def first_stop(self, tokens: list[int]) -> int | None:
        return next((i for i, t in enumerate(tokens) if t in self.options.stop_ids), None)

    # The two kinds of block pass every block algorithm is made of.

    def block_mask(self, session: Session, new: Tokens) -> torch.Tensor:
        """The additive attention mask of `new` tokens over [cache | new], from the shared rules."""
        keys = session.cached_tokens() + new
        return additive_mask(attention_allowed(new, keys, self.options.clean_attention), session.dtype)

    def denoise_logits(
        self,
        session: Session,
        block: torch.Tensor,
        mask: torch.Tensor | None = None,
        rows: slice = slice(None, -1),
    ) -> Passes:
        """Bidirectional pass of a (partly masked) block over the cache; its keys are not kept.

        Returns the logits of `rows`; with the token shift, row j predicts block position j + 1
        (the default skips the last row, which would predict past the block).
        """
        start = session.cache_len
        seq = session.next_positions(block.shape[0])
        if mask is None:
            mask = self.block_mask(session, Tokens.make(NOISY, seq, 0))
        logits = yield Pass(block, seq, mask, rows)
        session.rollback(start)
        return logits

    def causal_logits(self, session: Session, block: torch.Tensor, rows: slice = slice(None)) -> Passes:
        """Causal pass of a fully decoded block; writes its keys to the cache as AR decoding would.

        Returns the logits of `rows`: row j is the AR prediction for the token after block position j.
        """
        seq = session.next_positions(block.shape[0])
        mask = None  # transformers' own causal mask over [cache | block] is the C2C rule
        if self.options.clean_attention != "causal":
            mask = self.block_mask(session, Tokens.make(CLEAN, seq, 0))
        return (yield Pass(block, seq, mask, rows))

    def next_token(self, session: Session) -> Passes:
        """One causal pass over the pending tokens: the greedy next token, as `ar` decodes every one."""
        logits = yield from self.causal_logits(session, session.ids(session.pending), rows=slice(-1, None))
        return [int(logits.argmax())]

    def masked_block(
        self, known: list[int], device: torch.device | str = "cpu", size: int | None = None
    ) -> torch.Tensor:
        """`[known..., MASK ...]`, B tokens (or `size`): what every block starts from (`known` = the
        pending tokens)."""
        size = self.options.block_size if size is None else size
        block = torch.full((size,), self.options.mask_id, dtype=torch.long, device=device)
        block[: len(known)] = torch.tensor(known).to(device, non_blocking=True)
        return block
