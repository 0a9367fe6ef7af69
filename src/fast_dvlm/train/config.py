"""Training settings: a dataclass, optionally read from YAML, validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..conversion.recipe import Recipe
from ..errors import FastDVLMError

# transformers schedulers that step once per optimizer step and need only the warm-up and step counts
# (the plateau and greedy ones wait for a metric; the min-lr and stable-decay ones for more settings)
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                "inverse_sqrt")  # fmt: skip


@dataclass
class TrainConfig:
    """How long and how hard to train. `batch_size` is global (split over processes), per micro-step."""

    recipe: Recipe = field(default_factory=Recipe)
    steps: int = 1000  # optimizer steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # a transformers scheduler that needs no settings of its own
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_length: int = 2048
    gradient_checkpointing: bool = False
    freeze_vision: bool = False  # train the language model only; tower and projector stay as loaded
    group_by_length: bool = False  # batches of similar length: less padding, same samples per epoch
    length_split: int = 1  # each micro-batch run as this many chunks of similar length: same gradient
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, otherwise fp32
    image_root: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.recipe, dict):
            self.recipe = Recipe(**_settings(Recipe, self.recipe, "recipe"))
        positive = ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "max_length",
                    "length_split")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise FastDVLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise FastDVLMError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_steps < self.steps:
            raise FastDVLMError(f"warmup_steps ({self.warmup_steps}) must be in [0, steps={self.steps})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FastDVLMError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise FastDVLMError(
                f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}"
            )

    @classmethod
    def from_yaml(cls, path: str | Path | None, **overrides: Any) -> TrainConfig:
        """Settings from a YAML file (if any), then command-line overrides that are not None."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FastDVLMError(f"config file not found: {path}")
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise FastDVLMError(f"{path} is not valid YAML: {exc}") from None
            if not isinstance(values, dict):
                raise FastDVLMError(f"{path} must hold a mapping of settings")
        values |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**_settings(cls, values, "config"))


def _settings(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """`values` checked against the dataclass `cls`: no unknown names, numbers as numbers."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FastDVLMError(
            f"unknown {what} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    types = get_type_hints(cls)
    return {name: _number(value, types[name], f"{what} setting {name}") for name, value in values.items()}


def _number(value: Any, kind: Any, name: str) -> Any:
    """`value` as the number (or true/false) a field of type `kind` holds (other types: unchanged).

    PyYAML reads `1e-3` (no dot in the mantissa) as a string and `1000.0` as a float, both meant as
    numbers; anything that is not a number is one error line rather than a TypeError later."""
    if kind == tuple[int, ...]:
        if not isinstance(value, list | tuple):
            raise FastDVLMError(f"{name} must be a list of whole numbers, got {value!r}")
        return [_number(v, int, name) for v in value]
    if kind is bool:
        if not isinstance(value, bool):  # a quoted "false" would otherwise count as true
            raise FastDVLMError(f"{name} must be true or false, got {value!r}")
        return value
    if kind not in (int, float):
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    whole = isinstance(number, int) or (isinstance(number, float) and number.is_integer())
    if isinstance(number, bool) or not isinstance(number, int | float) or (kind is int and not whole):
        expected = "a whole number" if kind is int else "a number"
        raise FastDVLMError(f"{name} must be {expected}, got {value!r}")
    return kind(number)
