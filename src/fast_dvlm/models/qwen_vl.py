"""The Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): 3-row M-RoPE, vision features at `<|image_pad|>`."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import (
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from .chat_template import qwen_chat_template
from .family import Family, LMInputs, TinySize

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def mrope_section(head_dim: int) -> list[int]:
    """Split the rotary half-dimension over (time, height, width) in Qwen's 1/4, 3/8, 3/8 ratio."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def qwen_text_config(tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int) -> dict[str, Any]:
    head_dim = size.hidden_size // size.num_heads
    return dict(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=size.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section(head_dim),
        },
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def qwen_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )


class QwenVLFamily(Family):
    """Shared by the three Qwen-VL generations; they differ in vision tower and tiny config."""

    image_token = "<|image_pad|>"
    special_tokens = QWEN_SPECIAL_TOKENS
    chat_template = qwen_chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    position_rows = 3
    patch_size: ClassVar[int] = 14
    processor_class: ClassVar[type]
    config_class: ClassVar[type]
    video_processor_class: ClassVar[type] = Qwen2VLVideoProcessor

    def embed(self, model: PreTrainedModel, batch: BatchFeature) -> LMInputs:
        return self.embed_many(model, [batch])[0]

    def embed_many(self, model: PreTrainedModel, batches: list[BatchFeature]) -> list[LMInputs]:
        """One vision-tower call for every image of every sample (it attends within each image only)."""
        with_images = [b for b in batches if b.get("pixel_values") is not None]
        per_image: list[list[torch.Tensor]] = []  # [image][0: features, 1..: DeepStack features per layer]
        if with_images:
            vision = self.image_features(
                model,
                {key: torch.cat([b[key] for b in with_images]) for key in ("pixel_values", "image_grid_thw")},
            )
            deepstack = getattr(vision, "deepstack_features", None) or []
            per_image = [list(parts) for parts in zip(vision.pooler_output, *deepstack, strict=True)]
        out, taken = [], 0
        for batch in batches:
            images = 0 if batch.get("pixel_values") is None else batch["image_grid_thw"].shape[0]
            out.append(self._embed_with(model, batch, per_image[taken : taken + images]))
            taken += images
        return out

    def _embed_with(
        self, model: PreTrainedModel, batch: BatchFeature, images: list[list[torch.Tensor]]
    ) -> LMInputs:
        input_ids = batch["input_ids"]
        extra: dict[str, Any] = {}
        if images:
            features = torch.cat([parts[0] for parts in images])
            embeds, is_image = self.merge_image_features(model, input_ids, features)
            layers = [torch.cat([parts[k] for parts in images]) for k in range(1, len(images[0]))]
            extra = self.vision_extra(layers, is_image)
        else:
            embeds = model.get_input_embeddings()(input_ids)
        position_ids, _ = model.model.get_rope_index(
            input_ids,
            batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch.get("attention_mask"),
        )
        return LMInputs(embeds, position_ids, extra)

    def vision_extra(self, deepstack: list[torch.Tensor], is_image: torch.Tensor) -> dict[str, Any]:
        """Text-model kwargs beyond the embeddings that carry vision information (none here)."""
        return {}

    def tiny_config(self, tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int) -> Any:
        return self.config_class(
            text_config=self.tiny_text(tokenizer, size, vocab_size),
            vision_config=self.tiny_vision(size),
            **qwen_token_ids(tokenizer),
        )

    def tiny_text(
        self, tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int
    ) -> dict[str, Any]:
        return qwen_text_config(tokenizer, size, vocab_size)

    def tiny_vision(self, size: TinySize) -> dict[str, Any]:
        """The vision tower's hand-written tiny dimensions (Qwen2.5-VL and Qwen3-VL share these names)."""
        return dict(
            depth=size.vision_layers,
            hidden_size=size.vision_hidden_size,
            intermediate_size=2 * size.vision_hidden_size,
            num_heads=2,
            out_hidden_size=size.hidden_size,
            patch_size=self.patch_size,
            spatial_merge_size=size.spatial_merge,
        )

    def tiny_processor(self, tokenizer: PreTrainedTokenizerBase, size: TinySize) -> Any:
        factor = self.patch_size * size.spatial_merge  # the pixel side of one visual token
        image_processor = Qwen2VLImageProcessor(
            patch_size=self.patch_size,
            merge_size=size.spatial_merge,
            min_pixels=factor * factor,
            max_pixels=max(size.image_size, factor) ** 2,
        )
        return self.processor_class(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=self.video_processor_class(),
            chat_template=self.chat_template,
        )


class Qwen2VLFamily(QwenVLFamily):
    name = "qwen2_vl"
    processor_class = Qwen2VLProcessor
    config_class = Qwen2VLConfig

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return Qwen2VLForConditionalGeneration

    def tiny_vision(self, size: TinySize) -> dict[str, Any]:
        return dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden_size,
            hidden_size=size.hidden_size,
            mlp_ratio=2,
            num_heads=2,
            patch_size=self.patch_size,
            spatial_merge_size=size.spatial_merge,
        )


class Qwen2_5_VLFamily(QwenVLFamily):
    name = "qwen2_5_vl"
    processor_class = Qwen2_5_VLProcessor
    config_class = Qwen2_5_VLConfig

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return Qwen2_5_VLForConditionalGeneration

    def tiny_vision(self, size: TinySize) -> dict[str, Any]:
        window = dict(
            window_size=2 * self.patch_size * size.spatial_merge,
            fullatt_block_indexes=[size.vision_layers - 1],
        )
        return super().tiny_vision(size) | window


class Qwen3VLFamily(QwenVLFamily):
    """Qwen3-VL adds DeepStack: vision features of early ViT layers are added to early LM layers."""

    name = "qwen3_vl"
    patch_size = 16
    processor_class = Qwen3VLProcessor
    video_processor_class = Qwen3VLVideoProcessor
    config_class = Qwen3VLConfig

    @property
    def model_class(self) -> type[PreTrainedModel]:
        return Qwen3VLForConditionalGeneration

    def vision_extra(self, deepstack: list[torch.Tensor], is_image: torch.Tensor) -> dict[str, Any]:
        return {"visual_pos_masks": is_image, "deepstack_visual_embeds": deepstack}

    def tiny_text(
        self, tokenizer: PreTrainedTokenizerBase, size: TinySize, vocab_size: int
    ) -> dict[str, Any]:
        text = qwen_text_config(tokenizer, size, vocab_size)
        text["head_dim"] = size.hidden_size // size.num_heads
        text["rope_parameters"]["mrope_interleaved"] = True
        return text

    def tiny_vision(self, size: TinySize) -> dict[str, Any]:
        return super().tiny_vision(size) | dict(num_position_embeddings=64, deepstack_visual_indexes=[0])
