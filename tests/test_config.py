"""Training settings from YAML: numbers written as YAML reads them, the shipped example file."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from fast_dvlm import FastDVLMError
from fast_dvlm.conversion.recipe import Recipe
from fast_dvlm.train.config import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recipe.yaml"


def from_text(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return TrainConfig.from_yaml(path)


def test_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    text = "lr: 1e-3\nsteps: 2e3\nwarmup_steps: 10.0\nrecipe:\n  noise_eps: 5e-4\n  block_sizes: [2, 8.0]\n"
    assert isinstance(yaml.safe_load(text)["lr"], str)  # what PyYAML does with `1e-3`
    config = from_text(tmp_path, text)
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.steps == 2000 and isinstance(config.steps, int)
    assert config.warmup_steps == 10 and isinstance(config.warmup_steps, int)
    assert config.recipe.noise_eps == 5e-4 and config.recipe.block_sizes == (2, 8)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: fast\n", "config setting lr must be a number, got 'fast'"),
        ("lr: true\n", "config setting lr must be a number, got True"),
        ("steps: 10.5\n", "config setting steps must be a whole number, got 10.5"),
        ("recipe:\n  beta_ar: half\n", "recipe setting beta_ar must be a number, got 'half'"),
        ("recipe:\n  block_sizes: 32\n", "recipe setting block_sizes must be a list of whole numbers"),
        ("freeze_vision: 'false'\n", "config setting freeze_vision must be true or false, got 'false'"),
        ("recipe:\n  two_stage: 'no'\n", "recipe setting two_stage must be true or false, got 'no'"),
        ("lr_schedule: cosin\n", "lr_schedule must be one of linear, cosine, "),
        ("lr_schedule: reduce_lr_on_plateau\n", "lr_schedule must be one of linear, cosine, "),
    ],
)
def test_a_setting_of_the_wrong_kind_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(FastDVLMError) as caught:
        from_text(tmp_path, text)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_an_unknown_clean_attention_is_one_clear_error(tmp_path):
    message = r"^clean_attention must be 'causal' or 'block-causal', got 'full'$"
    with pytest.raises(FastDVLMError, match=message):
        from_text(tmp_path, "recipe:\n  clean_attention: full\n")


def test_the_example_recipe_names_every_setting_at_its_default():
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert set(raw) == {f.name for f in fields(TrainConfig)}
    assert set(raw["recipe"]) == {f.name for f in fields(Recipe)}
    assert asdict(TrainConfig.from_yaml(EXAMPLE)) == asdict(TrainConfig())
