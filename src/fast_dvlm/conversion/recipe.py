"""The conversion recipe's switches, each defaulting to the paper's choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from ..errors import FastDVLMError
from ..settings import CleanAttention, check_clean_attention
from .layout import NoisyLayout


@dataclass
class Recipe:
    """What makes an AR VLM a block-diffusion VLM; every piece can be switched off for ablations."""

    block_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)  # annealing candidates; the last is the final size
    anneal_block_size: bool = True
    complementary_mask: bool = True
    noise_eps: float = 1e-3
    always_mask_eos: bool = False  # force each response's <|im_end|> into the first copy's mask
    auto_truncate: bool = True  # False: blocks run on across turn boundaries (ablation, see blocks.py)
    alpha_diffusion: float = 0.5
    beta_ar: float = 0.5
    noisy_layout: NoisyLayout = "response"
    clean_attention: CleanAttention = "causal"  # "block-causal" reproduces Fast-dLLM v2 (ablation)
    two_stage: bool = False  # stage 1: text-only diffusion fine-tune; stage 2: multimodal
    stage1_fraction: float = 0.5  # share of the steps spent in stage 1 when two_stage

    def __post_init__(self) -> None:
        self.block_sizes = tuple(int(b) for b in self.block_sizes)
        if (
            not self.block_sizes
            or min(self.block_sizes) < 1
            or list(self.block_sizes) != sorted(self.block_sizes)
        ):
            raise FastDVLMError(
                f"block_sizes must be increasing positive sizes, got {list(self.block_sizes)}"
            )
        if self.alpha_diffusion < 0 or self.beta_ar < 0 or self.alpha_diffusion + self.beta_ar == 0:
            raise FastDVLMError("alpha_diffusion and beta_ar must be >= 0 and not both 0")
        if self.noisy_layout not in get_args(NoisyLayout):
            raise FastDVLMError(f"noisy_layout must be response, text or full, got {self.noisy_layout!r}")
        check_clean_attention(self.clean_attention)
        if not 0.0 < self.noise_eps < 1.0:
            raise FastDVLMError(f"noise_eps must be in (0, 1), got {self.noise_eps}")
        if self.two_stage and not 0.0 < self.stage1_fraction < 1.0:
            raise FastDVLMError(
                f"stage1_fraction must be in (0, 1) with two_stage, got {self.stage1_fraction}"
            )

    @property
    def final_block_size(self) -> int:
        return self.block_sizes[-1]
