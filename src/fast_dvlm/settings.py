"""Block-diffusion settings that travel with a checkpoint, inside its `config.json`.

They live under the key `fast_dvlm` of the model config so that a converted checkpoint still loads
with plain `transformers.from_pretrained` (which ignores unknown keys) and keeps what decoding needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, cast, get_args

from .errors import FastDVLMError

CONFIG_KEY = "fast_dvlm"
# The paper's decoding defaults, the one place they are written: tokens per block, tokens per
# sub-block (spec-quadratic's and diffusion's unit of commitment) and the confidence threshold tau.
BLOCK_SIZE, SUB_BLOCK_SIZE, THRESHOLD = 32, 8, 0.9
CleanAttention = Literal["causal", "block-causal"]  # how committed tokens attend to each other
CLEAN_ATTENTIONS: tuple[str, ...] = get_args(CleanAttention)
BlockAlignment = Literal["answer", "absolute"]
BLOCK_ALIGNMENTS: tuple[str, ...] = get_args(BlockAlignment)


@dataclass
class DiffusionSettings:
    """What a block-diffusion VLM needs to decode, with the paper's defaults.

    clean_attention: how the committed (clean) tokens attend to each other. "causal" is Fast-dVLM
    (token-level causal, so the KV cache equals an AR model's); "block-causal" is Fast-dLLM v2.
    block_alignment: where blocks start. "answer" (Fast-dVLM): at the first answer token, seeded by
    the prefill's AR prediction. "absolute" (Fast-dLLM v2): at multiples of the block size from the
    sequence start, so the prompt's last partial block is decoded inside the first answer block.
    recipe: the training recipe that produced the checkpoint (empty for a model never converted).
    """

    mask_token_id: int | None = None
    block_size: int = BLOCK_SIZE
    sub_block_size: int = SUB_BLOCK_SIZE
    threshold: float = THRESHOLD
    clean_attention: CleanAttention = "causal"
    block_alignment: BlockAlignment = "answer"
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_block_settings(self.block_size, self.sub_block_size, self.threshold)
        check_clean_attention(self.clean_attention)
        if self.block_alignment not in BLOCK_ALIGNMENTS:
            raise FastDVLMError(
                f"block_alignment must be 'answer' or 'absolute', got {self.block_alignment!r}"
            )

    @property
    def converted(self) -> bool:
        """Whether the checkpoint was trained to decode blocks: converted with a diffusion loss, or
        released by the authors. An AR-only run of the same trainer (the demo's AR base) records a
        recipe too, with `alpha_diffusion` 0."""
        return bool(self.recipe) and self.recipe.get("recipe", {}).get("alpha_diffusion", 1) > 0

    @classmethod
    def from_config(cls, config: Any) -> DiffusionSettings:
        stored = getattr(config, CONFIG_KEY, None) or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})

    def write_to(self, config: Any) -> None:
        setattr(config, CONFIG_KEY, asdict(self))


def validate_block_settings(block_size: int, sub_block_size: int, threshold: float) -> None:
    """Reject block settings that contradict each other, with a message that says how to fix them."""
    if block_size < 1:
        raise FastDVLMError(f"block_size must be at least 1, got {block_size}")
    if sub_block_size < 1 or block_size % sub_block_size:
        raise FastDVLMError(
            f"sub_block_size ({sub_block_size}) must be a positive divisor of block_size ({block_size})"
        )
    if not 0.0 < threshold <= 1.0:
        raise FastDVLMError(f"threshold must be in (0, 1], got {threshold}")


def check_clean_attention(value: str) -> CleanAttention:
    """`value` itself if it names a clean-stream attention rule; otherwise one error line naming them."""
    if value not in CLEAN_ATTENTIONS:
        raise FastDVLMError(f"clean_attention must be 'causal' or 'block-causal', got {value!r}")
    return cast(CleanAttention, value)
