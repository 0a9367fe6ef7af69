"""Block diffusion with a KV cache: τ-threshold parallel unmasking, sub-block by sub-block (SPEC §2.2)."""

from __future__ import annotations

import torch

from ..diffusion.attention import Tokens
from .base import Decoder
from .session import Session


class BlockDiffusionDecoder(Decoder):
    """Each block starts as `[seed, MASK x (B-1)]`. Sub-blocks of S positions are decoded left to
    right; each pass unmasks every masked position of the current sub-block whose confidence
    exceeds τ (at least the most confident one). A final causal pass writes the block's keys to
    the cache and predicts the next block's seed."""

    name = "diffusion"

    def step(self, session: Session, budget: int) -> list[int]:
        opts = self.options
        block = self.masked_block(session.tokens[-1])
        masked = torch.ones(opts.block_size, dtype=torch.bool)  # tracked apart from ids: a seed may
        masked[0] = False  # itself be the mask token's id when an unconverted model predicts it
        start = session.cache_len
        seq = torch.arange(start, start + opts.block_size)
        mask = self.block_mask(session, Tokens.make(True, seq, 0))  # the same for every pass of this block
        for sub_start in range(0, opts.block_size, opts.sub_block_size):
            in_sub = torch.zeros_like(masked)
            in_sub[sub_start : sub_start + opts.sub_block_size] = True
            while (masked & in_sub).any():
                logits = self.denoise_logits(session, block, mask)
                masked &= ~self.unmask(block, masked & in_sub, logits)
                done = self.finished_early(block, masked, budget)
                if done is not None:
                    return done
        next_seed = int(self.causal_logits(session, block)[-1].argmax())
        return block[1:].tolist() + [next_seed]

    def unmask(self, block: torch.Tensor, candidates: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Fill the confident `candidates` of `block` in place from the shifted logits; return which."""
        shifted = logits[:-1].clone()  # row j predicts position j + 1
        shifted[:, self.options.mask_id] = float("-inf")  # never "unmask" into the mask token
        confidence, prediction = shifted.softmax(-1).max(-1)
        confidence = torch.where(candidates[1:], confidence, torch.tensor(-1.0))
        chosen = confidence > self.options.threshold
        chosen[confidence.argmax()] = True  # progress: at least the most confident one
        chosen &= candidates[1:]
        block[1:][chosen] = prediction[chosen]
        return torch.cat([torch.zeros(1, dtype=torch.bool), chosen])

    def finished_early(self, block: torch.Tensor, masked: torch.Tensor, budget: int) -> list[int] | None:
        """The tokens after the seed, if no more passes are needed: the first `budget` are known, or
        a stop token is known with nothing masked before it."""
        first_masked = int(masked.nonzero()[0]) if masked.any() else block.shape[0]
        known = block[1:first_masked].tolist()
        if len(known) >= budget:
            return known[:budget]
        stop_at = self.first_stop(known)
        return known[: stop_at + 1] if stop_at is not None else None
