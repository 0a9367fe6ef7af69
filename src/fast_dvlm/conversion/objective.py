"""One conversion forward pass: embed, lay out the noisy and clean streams, run the LM, score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature, PreTrainedModel

from ..models.family import Family
from .blocks import block_layout
from .layout import RowBatch, build_row, stack_rows
from .loss import LossParts, conversion_loss
from .noise import noise_masks
from .recipe import Recipe


@dataclass
class Sample:
    """One rendered conversation: processor output (batch of 1) and which tokens are responses."""

    batch: BatchFeature
    response: torch.Tensor  # [L] bool: assistant tokens, each response's <|im_end|> and newline included

    @property
    def input_ids(self) -> torch.Tensor:
        return self.batch["input_ids"][0]


def layout_batch(
    model: PreTrainedModel,
    family: Family,
    samples: list[Sample],
    recipe: Recipe,
    block_size: int,
    seeds: list[int],
    mask_id: int,
) -> tuple[RowBatch, dict[str, Any]]:
    """Rows for `samples`, noise drawn from one generator per sample (seeded by `seeds`), so the
    noise does not depend on how samples are split over processes. The bookkeeping (blocks, noise,
    indices) is done on the host; embeddings, masks and targets end up on the model's device."""
    device = model.get_input_embeddings().weight.device
    mask_embedding = model.get_input_embeddings()(torch.tensor(mask_id, device=device))
    image_token = family.image_token_id(model)
    end_token = end_token_id(model)
    rows, extras = [], []
    # BatchFeature.to moves in place: copies, so the caller's samples stay where they were
    embedded = family.embed_many(model, [BatchFeature(dict(sample.batch)).to(device) for sample in samples])
    for sample, seed, inputs in zip(samples, seeds, embedded, strict=True):
        ids, response = sample.input_ids.cpu(), sample.response.cpu()
        blocks, block_start = block_layout(response, block_size, recipe.auto_truncate)
        noise = []  # with no diffusion loss (plain AR training) the noisy copies would be dead weight
        if recipe.alpha_diffusion > 0:
            noise = noise_masks(
                response & ~block_start,
                blocks,
                torch.Generator().manual_seed(seed),
                recipe.noise_eps,
                recipe.complementary_mask,
                (ids == end_token) if recipe.always_mask_eos else None,
            )
        rows.append(
            build_row(
                inputs.inputs_embeds[0],
                inputs.position_ids[:, 0],
                ids,
                response,
                ids == image_token,
                blocks,
                noise,
                mask_embedding,
                recipe.noisy_layout,
            )
        )
        extras.append(inputs.extra)
    batch = stack_rows(rows, recipe.clean_attention, device)
    return batch, merge_extras(extras, batch.vision)


def end_token_id(model: PreTrainedModel) -> int:
    """The token that ends a turn (`<|im_end|>` for the Qwen chat format)."""
    eos = model.config.get_text_config().eos_token_id
    return eos[0] if isinstance(eos, list) else eos


def merge_extras(extras: list[dict[str, Any]], vision: torch.Tensor) -> dict[str, Any]:
    """Batch the families' extra text-model inputs. DeepStack (Qwen3-VL) adds per-layer vision
    features at the vision positions: those of the clean stream, in row-major order."""
    if not any("deepstack_visual_embeds" in e for e in extras):
        return {}
    layers = max(len(e.get("deepstack_visual_embeds", [])) for e in extras)
    per_layer = [
        torch.cat([e["deepstack_visual_embeds"][k] for e in extras if "deepstack_visual_embeds" in e])
        for k in range(layers)
    ]
    return {"visual_pos_masks": vision, "deepstack_visual_embeds": per_layer}


def conversion_forward(
    model: PreTrainedModel,
    family: Family,
    samples: list[Sample],
    recipe: Recipe,
    block_size: int,
    seeds: list[int],
    mask_id: int,
) -> tuple[LossParts, torch.Tensor, RowBatch]:
    """The loss of one batch, with the hidden states `[B, T, D]` and the layout that produced it."""
    batch, extra = layout_batch(model, family, samples, recipe, block_size, seeds, mask_id)
    out = family.language_model(model)(
        inputs_embeds=batch.embeds,
        position_ids=family.lm_position_ids(batch.positions),
        attention_mask=batch.attention_mask,
        use_cache=False,
        **extra,
    )
    hidden = out.last_hidden_state
    loss = conversion_loss(hidden, family.lm_head(model), batch, recipe.alpha_diffusion, recipe.beta_ar)
    return loss, hidden, batch
