"""What differs between VLM families, and nothing else.

Everything downstream (decoding, training) works on `LMInputs`: the prompt's embeddings with the
vision features already merged in, and its rotary position ids as a `[R, B, L]` tensor (R = 3 rows
of M-RoPE for the Qwen-VL family, R = 1 for plain 1-D RoPE). A family says how to get there from
its processor's output, which text model and head to run, and which special tokens it uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoProcessor, BatchFeature, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin


@dataclass
class LMInputs:
    """One batch of prompts, ready for the language model."""

    inputs_embeds: torch.Tensor  # [B, L, D], vision features already in place
    position_ids: torch.Tensor  # [R, B, L], R = rows of the family's rotary embedding
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific text-model kwargs


@dataclass
class TinySize:
    """Dimensions of a tiny model built from scratch (tests, benchmarks, the demo)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_layers: int = 2
    spatial_merge: int = 2  # Qwen-VL: side of the patch square merged into one visual token
    image_size: int = 64  # side, in pixels, images are resized towards
    max_position_embeddings: int = 4096
    init_std: float = 0.02  # larger values give random models more varied (harder) outputs for tests


class Family(ABC):
    """How one VLM family builds its inputs. Subclasses are stateless; one instance each."""

    name: ClassVar[str]  # the transformers `model_type`
    image_token: ClassVar[str]
    stop_tokens: ClassVar[tuple[str, ...]] = ("<|im_end|>", "<|endoftext|>")
    special_tokens: ClassVar[tuple[str, ...]]  # every special token of the family's tokenizer
    chat_template: ClassVar[str]
    position_rows: ClassVar[int]

    @property
    @abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers class that loads a checkpoint of this family."""

    @abstractmethod
    def embed(self, model: PreTrainedModel, batch: BatchFeature) -> LMInputs:
        """Turn processor output into embeddings (vision merged in) and position ids."""

    def embed_many(self, model: PreTrainedModel, batches: list[BatchFeature]) -> list[LMInputs]:
        """`embed` for several samples of different lengths; a family may batch its vision tower."""
        return [self.embed(model, batch) for batch in batches]

    @abstractmethod
    def tiny_config(self, tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int) -> Any:
        """A hand-written config of this family's real architecture, at tiny size."""

    @abstractmethod
    def tiny_processor(self, tokenizer: PreTrainedTokenizerBase, size: TinySize) -> ProcessorMixin:
        """The family's real processor class around `tokenizer`, resizing images to `size.image_size`."""

    def load_processor(self, path: Any) -> Any:
        """The processor saved next to a checkpoint of this family."""
        return AutoProcessor.from_pretrained(path, local_files_only=True)

    def vision_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The processor's pixels in the layout the family's vision tower runs fastest on."""
        return pixel_values

    def image_features(self, model: PreTrainedModel, pixels: dict[str, torch.Tensor]) -> Any:
        """The vision tower's output for the processor's image entries (`pixel_values` and, where the
        family has them, `image_grid_thw`), run in the layout of `vision_pixels`: every caller, decoding,
        stage 0 and the benchmarks, gets the tower as decoding runs it."""
        pixels = pixels | {"pixel_values": self.vision_pixels(pixels["pixel_values"])}
        return model.model.get_image_features(**pixels, return_dict=True)

    def init_tiny_weights(self, model: PreTrainedModel) -> None:  # noqa: B027 (optional hook)
        """Fix up a freshly built tiny model's initialisation where transformers' own is unsuitable."""

    def language_model(self, model: PreTrainedModel) -> nn.Module:
        return model.model.language_model

    def lm_head(self, model: PreTrainedModel) -> nn.Module:
        return model.lm_head

    def text_config(self, model: PreTrainedModel) -> Any:
        return model.config.text_config

    def lm_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Convert our `[R, B, n]` position ids into what the text model's forward expects."""
        return position_ids

    def response_mask(self, input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """`[L]` True on assistant tokens: after each `<|im_start|>assistant\n` header, up to and including
        the turn's `<|im_end|>` and the newline after it (the Qwen chat format all families here use)."""
        header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        newline = tokenizer.encode("\n", add_special_tokens=False)
        ids = input_ids.tolist()
        mask = torch.zeros(len(ids), dtype=torch.bool)
        for i in range(len(ids) - len(header) + 1):
            if ids[i : i + len(header)] != header:
                continue
            start = stop = i + len(header)
            while stop < len(ids) and ids[stop] != end:
                stop += 1
            stop += 1  # the <|im_end|> itself
            if ids[stop : stop + len(newline)] == newline:
                stop += len(newline)
            mask[start : min(stop, len(ids))] = True
        return mask

    def image_token_id(self, model: PreTrainedModel) -> int:
        return model.config.image_token_id

    def merge_image_features(
        self, model: PreTrainedModel, input_ids: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed `input_ids` and put `features` ([n_image_tokens, D]) at the image tokens.

        Returns the embeddings `[B, L, D]` and the boolean image-token mask `[B, L]`.
        """
        embeds = model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id(model)
        if int(is_image.sum()) != features.shape[0]:
            raise ValueError(
                f"{int(is_image.sum())} image tokens in the prompt but {features.shape[0]} image features"
            )
        embeds = embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))
        return embeds, is_image
