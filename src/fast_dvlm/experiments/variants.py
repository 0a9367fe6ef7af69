"""The paper's comparisons as conversion variants: each one Recipe override on one shared budget.

Every variant trains from the same AR base for the same steps, global batch, learning rate, data
order and noise seed; only its recipe switches differ (and, for the repeat of `direct`, the seed,
whose effect is the run-to-run noise every other difference is measured against).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..train.config import TrainConfig


@dataclass(frozen=True)
class Variant:
    name: str
    change: str  # what differs from `direct`, for the tables
    recipe: dict[str, Any] = field(default_factory=dict)  # Recipe overrides
    seed_offset: int = 0  # added to the shared seed (data order and noise)
    multi_turn: bool = False  # also scored on the multi-turn test conversations

    def config(self, shared: TrainConfig) -> TrainConfig:
        """The shared training settings with this variant's switches (`shared` is left as it is)."""
        recipe = replace(shared.recipe, **self.recipe)
        return replace(shared, recipe=recipe, seed=shared.seed + self.seed_offset)


DIRECT = "direct"
REPEAT = "direct-seed2"
TWO_STAGE = "two-stage"
BLOCK_CAUSAL = "block-causal"
NO_ANNEALING = "no-annealing"
NO_AUTO_TRUNCATION = "no-auto-truncation"
VISION_BOTH = "vision-both-streams"
AR_WEIGHT = "loss-0.5-1.0"

VARIANTS: tuple[Variant, ...] = (
    Variant(DIRECT, "the paper's recipe: one multimodal stage", multi_turn=True),
    Variant(TWO_STAGE, "text-only diffusion stage first (half the steps), then multimodal",
            {"two_stage": True}),
    Variant(BLOCK_CAUSAL, "no causal context attention: block-causal clean stream (Fast-dLLM v2)",
            {"clean_attention": "block-causal"}),
    Variant(NO_ANNEALING, "no block-size annealing: block 32 throughout", {"anneal_block_size": False}),
    Variant(NO_AUTO_TRUNCATION, "no auto-truncation: blocks run on across turns",
            {"auto_truncate": False}, multi_turn=True),
    Variant(VISION_BOTH, "vision tokens in both streams (noisy copies of the full sequence)",
            {"noisy_layout": "full"}),
    Variant(AR_WEIGHT, "loss weights alpha/beta 0.5/1.0 (the released code's) instead of 0.5/0.5",
            {"beta_ar": 1.0}),
    Variant(REPEAT, "direct again with another seed: the run-to-run noise", seed_offset=1, multi_turn=True),
)  # fmt: skip
