"""The conversion loss: α · diffusion + β · autoregressive, both with the token shift."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .layout import RowBatch


@dataclass
class LossParts:
    total: torch.Tensor
    diffusion: torch.Tensor
    ar: torch.Tensor


def per_sample_mean(values: torch.Tensor, sample: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Sum `values` per sample, divide by that sample's count, average over samples.

    Normalising inside each sample makes the batch loss a plain mean over samples, so averaging it
    across data-parallel processes gives the same number as one process with the whole batch.
    """
    sums = torch.zeros(counts.shape[0], dtype=values.dtype, device=values.device).index_add(0, sample, values)
    return (sums / counts.clamp(min=1).to(values.dtype)).mean()


def conversion_loss(
    hidden: torch.Tensor, lm_head: nn.Module, batch: RowBatch, alpha: float = 0.5, beta: float = 0.5
) -> LossParts:
    """`hidden` [B, T, D]. Diffusion: CE at each masked token from the noisy row before it, normalised
    by the sample's maskable tokens (the complementary pair masks each once). AR: next-token CE over
    the clean stream's response tokens. The head runs only on the rows that predict something."""
    flat = hidden.flatten(0, 1)
    zero = hidden.sum() * 0.0  # keeps the graph connected when a part has no targets
    diffusion, ar = zero, zero
    if batch.diff_pred.numel():
        ce = F.cross_entropy(lm_head(flat[batch.diff_pred]).float(), batch.diff_target, reduction="none")
        diffusion = per_sample_mean(ce, batch.diff_sample, batch.n_maskable)
    if batch.ar_pred.numel():
        ce = F.cross_entropy(lm_head(flat[batch.ar_pred]).float(), batch.ar_target, reduction="none")
        ar = per_sample_mean(ce, batch.ar_sample, batch.n_answered)
    return LossParts(alpha * diffusion + beta * ar, diffusion, ar)
