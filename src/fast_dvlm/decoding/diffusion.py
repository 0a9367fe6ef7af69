"""Block diffusion with a KV cache: τ-threshold parallel unmasking, sub-block by sub-block."""

from __future__ import annotations

import torch

from ..conversion.attention import NOISY, Tokens
from .base import Decoder, DecodeState, Passes
from .session import Session


class BlockDiffusionDecoder(Decoder):
    """Each block starts as `[seed, MASK x (B-1)]` (or the pending prompt tail, then masks).
    Sub-blocks of S positions are decoded left to right; each pass unmasks every masked position
    of the current sub-block whose confidence exceeds τ (at least the most confident one). A final
    causal pass writes the block's keys to the cache and predicts the next block's seed."""

    name = "diffusion"

    def step(self, session: Session, state: DecodeState, budget: int) -> Passes:
        size, sub, known = self.options.block_size, self.options.sub_block_size, len(session.pending)
        # the block and its bookkeeping stay on the host: every pass must be read there anyway, to
        # know whether the sub-block is done (the algorithm's one sync per pass)
        block = self.masked_block(session.pending)
        # tracked apart from the ids: an unconverted model may predict the mask token's id as a seed
        masked = torch.ones(size, dtype=torch.bool)
        masked[:known] = False
        seq = session.next_positions(size)
        mask = self.block_mask(session, Tokens.make(NOISY, seq, 0))  # the same for every pass of this block
        for first in range(0, size, sub):
            last = min(first + sub, size)  # this sub-block is positions first .. last-1
            while masked[first:last].any():
                # only the rows that predict this sub-block: row j predicts position j + 1
                rows = slice(max(first - 1, 0), last - 1)
                logits = yield from self.denoise_logits(session, block, mask, rows)
                self.unmask(block, masked, logits, first_position=rows.start + 1)
                done = self.finished_early(block, masked, known, budget)
                if done is not None:
                    return done
        next_seed = int((yield from self.causal_logits(session, block, rows=slice(-1, None)))[0].argmax())
        return block[known:].tolist() + [next_seed]

    def unmask(
        self, block: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor, first_position: int
    ) -> None:
        """Fill, in place, the confident masked positions that `logits` predict.

        Row r of `logits` predicts block position `first_position + r`. Positions whose confidence
        exceeds τ are filled, and at least the most confident one; `masked` is updated to match.
        """
        span = slice(first_position, first_position + logits.shape[0])
        candidates = masked[span]
        logits = logits.to(torch.float32, copy=True)  # bf16 confidences would round near τ
        logits[:, self.options.mask_id] = float("-inf")  # never "unmask" into the mask token
        confidence, prediction = (t.cpu() for t in logits.softmax(-1).max(-1))
        confidence = torch.where(candidates, confidence, torch.tensor(-1.0))
        chosen = candidates & (confidence > self.options.threshold)
        chosen[confidence.argmax()] = True  # progress: at least the most confident one
        block[span][chosen] = prediction[chosen]
        masked[span] &= ~chosen

    def finished_early(
        self, block: torch.Tensor, masked: torch.Tensor, pending: int, budget: int
    ) -> list[int] | None:
        """The tokens after the `pending` ones, if no more passes are needed: the first `budget` are
        known, or a stop token is known with nothing masked before it."""
        first_masked = int(masked.nonzero()[0]) if masked.any() else block.shape[0]
        known = block[pending:first_masked].tolist()
        if len(known) >= budget:
            return known[:budget]
        stop_at = self.first_stop(known)
        return known[: stop_at + 1] if stop_at is not None else None
