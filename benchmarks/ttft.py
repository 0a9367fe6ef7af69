"""Time to first token: FastViTHD against the Qwen2.5-VL ViT, both feeding the same 0.5B-class Qwen2.

FastViTHD (timm `fastvit_mci3`, total stride 64) turns a side-s image into (s/64)² visual tokens,
the Qwen2.5-VL ViT (patch 14, 2x2 merge) into (s/28)²: the encoder sets both its own cost and the
size of the language model's prefill. TTFT = vision encoder + prefill of [visual | text prompt] +
the output head on the last position. A whole answer adds its decoding passes, costed from
measured per-pass times and a *measured* number of tokens accepted per pass, passed in: random
weights accept nothing, so this module never makes that number up.

Weights are random (latency does not depend on their values), fp32, built offline from configs
with the transformers classes a real checkpoint loads into. Slow: the real ViT at 1024² takes over a
minute a run on 2 cores, so it is timed `--slow-repeats` times.

    OMP_NUM_THREADS=2 python benchmarks/ttft.py --out benchmarks/results/ttft

When `fast-dvlm bench` measures a new tokens-per-pass figure, `--recost benchmarks/results/ttft.json`
costs the stored run's answers again with it, timing nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from timm.utils.model import reparameterize_model
from torch import nn
from tqdm import tqdm
from transformers import (
    DynamicCache,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    Qwen2_5_VLVisionConfig,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from fast_dvlm.decoding import DecodeOptions, Session, make_decoder
from fast_dvlm.decoding.answer import run_alone
from fast_dvlm.errors import FastDVLMError, first_line
from fast_dvlm.models.family import LMInputs
from fast_dvlm.models.fast_vlm import STRIDE as FASTVIT_STRIDE
from fast_dvlm.models.registry import get_family
from fast_dvlm.settings import BLOCK_SIZE

T = TypeVar("T")

RESOLUTIONS = (256, 512, 768, 1024)
PROMPT_TOKENS = 20  # the text around the image: a short question in a chat template
ANSWER_TOKENS = 64
SLOW_RESOLUTION = 1024  # from here on the ViT is timed `slow_repeats` times (over a minute a run on 2 cores)
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCH_DEMO = RESULTS / "bench_demo.json"  # `fast-dvlm bench --json` of the demo model

# FastVLM-0.5B's language model: Qwen2-0.5B.
QWEN2_0_5B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
)
# Qwen2.5-VL-3B's vision encoder; patch 14 and merge 2 are fixed below (they define its stride).
QWEN2_5_VL_3B_VIT = dict(
    depth=32,
    hidden_size=1280,
    num_heads=16,
    intermediate_size=3420,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)
MCI3_LAST_WIDTH = 1536  # fastvit_mci3's last stage width; its final conv doubles it to 3072 features


@dataclass(frozen=True)
class TTFTSizes:
    """Configs of the three parts; the defaults are the real sizes (tests pass tiny ones)."""

    text: dict = field(default_factory=lambda: dict(QWEN2_0_5B))
    fastvit: dict = field(default_factory=dict)  # timm `fastvit_mci3` kwargs; {} = its real size
    vit: dict = field(default_factory=lambda: dict(QWEN2_5_VL_3B_VIT))


def check_side(side: int, stride: int, encoder: str) -> int:
    """Visual tokens of a square image of `side` pixels, or one clear error if the encoder cannot take it."""
    if side < stride or side % stride:
        raise FastDVLMError(
            f"image side {side} is not a positive multiple of {stride}, the pixel side of one {encoder} "
            f"visual token; use e.g. {', '.join(str(stride * k) for k in (4, 8, 16))}"
        )
    return (side // stride) ** 2


class FastViTHD:
    """FastVLM's encoder: FastViTHD and its 2-layer projector, inside the FastVLM model."""

    label = "FastViTHD"
    stride = FASTVIT_STRIDE

    def __init__(self, model: FastVlmForConditionalGeneration) -> None:
        self.model = model

    @classmethod
    def input_side(cls, resolution: int) -> int:
        """FastVLM's processor resizes to one fixed side, which must be a multiple of the stride."""
        check_side(resolution, cls.stride, cls.label)
        return resolution

    @classmethod
    def visual_tokens(cls, side: int) -> int:
        return check_side(side, cls.stride, cls.label)

    def random_input(self, side: int) -> torch.Tensor:
        self.visual_tokens(side)
        return torch.randn(1, 3, side, side)  # [1, C, H, W], normalised pixels

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        # through the family, in the layout decoding runs the tower in (channels-last)
        return get_family("fast_vlm").image_features(self.model, {"pixel_values": pixels}).pooler_output[0]


class QwenViT:
    """Qwen2.5-VL's vision encoder (ViT/14, window attention, 2x2 patch merger into the LM's width)."""

    label = "Qwen2.5-VL ViT"
    patch_size = 14
    merge_size = 2
    stride = patch_size * merge_size
    pixel_range = (56 * 56, 28 * 28 * 16384)  # Qwen2.5-VL's released min_pixels / max_pixels

    def __init__(self, model: Qwen2_5_VisionTransformerPretrainedModel) -> None:
        self.model = model

    @classmethod
    def input_side(cls, resolution: int) -> int:
        """Qwen2.5-VL's processor rounds a square image to the nearest multiple of 28 (`smart_resize`)."""
        if resolution < 1:
            raise FastDVLMError(f"image side must be positive, got {resolution}")
        return smart_resize(resolution, resolution, cls.stride, *cls.pixel_range)[0]

    @classmethod
    def visual_tokens(cls, side: int) -> int:
        return check_side(side, cls.stride, cls.label)

    def random_input(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened patches as the processor lays them out ([patches, C·T·P·P]) and the image's grid."""
        self.visual_tokens(side)
        grid = side // self.patch_size
        c = self.model.config
        patches = torch.randn(grid * grid, c.in_channels * c.temporal_patch_size * self.patch_size**2)
        return patches, torch.tensor([[1, grid, grid]])

    def encode(self, pixels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model(*pixels).pooler_output  # [n, D]


def random_fastvit_weights(timm_model: nn.Module, seed: int = 0) -> None:
    """Give FastViTHD random weights under which activations stay in the normal float range.

    transformers' init (std 0.02 convolutions) lets them shrink through the five stages into
    denormal floats and zeros, which CPUs compute several times slower: timing such a model
    would misstate FastViTHD's latency. Fan-in scaled convolutions, random batch-norm statistics
    and layer scales also make every branch that fusing folds carry signal, so a fusing error shows.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in timm_model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear", generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):  # timm's LayerNorm2d included
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
        for name, param in timm_model.named_parameters():
            if name.endswith("layer_scale.gamma"):
                param.uniform_(0.05, 0.2, generator=generator)


def unfused_modules(model: nn.Module) -> list[str]:
    """Names of the re-parameterisable FastViT blocks still in their multi-branch training form."""
    return [
        name
        for name, module in model.named_modules()
        if hasattr(module, "reparameterize") and getattr(module, "reparam_conv", None) is None
    ]


def fuse_fastvit(model: FastVlmForConditionalGeneration) -> None:
    """Fold FastViTHD's branches (MobileOne, RepMixer, large-kernel and positional convs) into single
    convolutions, in place: the inference form FastVLM ships and runs. transformers wraps the timm
    model in `TimmWrapperModel`; timm's `reparameterize_model` fuses the wrapped `timm_model`."""
    reparameterize_model(model.model.vision_tower.timm_model, inplace=True)


def build_fastvlm(sizes: TTFTSizes, fuse: bool = True, seed: int = 0) -> FastVlmForConditionalGeneration:
    """FastVLM (FastViTHD -> projector -> Qwen2), built in timm's training form and then fused."""
    fastvit = {**sizes.fastvit, "inference_mode": False}
    vision = {
        "model_type": "timm_wrapper",
        "architecture": "fastvit_mci3",
        "do_pooling": False,  # FastVLM reads the feature map; the classifier pooling is unused
        "hidden_size": 2 * fastvit.get("embed_dims", [MCI3_LAST_WIDTH])[-1],
        "model_args": fastvit,
    }
    text = {"model_type": "qwen2", **sizes.text}
    torch.manual_seed(seed)
    with torch.no_grad():
        config = FastVlmConfig(
            vision_config=vision, text_config=text, image_token_index=text["vocab_size"] - 1
        )
        model = FastVlmForConditionalGeneration(config).eval()
        random_fastvit_weights(model.model.vision_tower.timm_model, seed)
        if fuse:
            fuse_fastvit(model)
    return model


def build_vit(sizes: TTFTSizes, seed: int = 0) -> Qwen2_5_VisionTransformerPretrainedModel:
    """The Qwen2.5-VL vision encoder, projecting into the language model's width."""
    config = Qwen2_5_VLVisionConfig(
        **sizes.vit,
        patch_size=QwenViT.patch_size,
        spatial_merge_size=QwenViT.merge_size,
        out_hidden_size=sizes.text["hidden_size"],
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        return Qwen2_5_VisionTransformerPretrainedModel(config).eval()


def median_ms(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Median wall-clock milliseconds of `runs` calls after one discarded warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def prefill(
    model: FastVlmForConditionalGeneration, features: torch.Tensor, prompt: torch.Tensor
) -> torch.Tensor:
    """Causal pass over [visual tokens | text prompt] into a fresh KV cache; the last hidden state."""
    lm = model.model.language_model
    embeds = torch.cat([features, model.get_input_embeddings()(prompt)])[None]  # [1, n_visual + n_text, D]
    cache = DynamicCache(config=model.config.text_config)
    out = lm(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1])[None], past_key_values=cache)
    return out.last_hidden_state[:, -1]  # [1, D]


def decode_pass_ms(
    model: FastVlmForConditionalGeneration, context: int, block_size: int, runs: int
) -> dict[str, float]:
    """Median ms of the passes an answer is decoded with, over a cache of `context` positions, each
    run by the decoders' own pass methods: AR's 1-token causal pass (logits of its last row), and
    spec-linear's bidirectional draft of `[seed, MASK x (B-1)]` and causal verify of B tokens."""
    session = Session(model, get_family("fast_vlm"))
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (context + 1,))  # the prompt, then the seed
    session.prefill(
        LMInputs(model.get_input_embeddings()(ids[:-1])[None], torch.arange(context).view(1, 1, -1))
    )
    options = DecodeOptions(
        max_new_tokens=ANSWER_TOKENS,
        stop_ids=frozenset(),
        mask_id=vocab - 1,
        block_size=block_size,
        sub_block_size=block_size,
    )
    decoder = make_decoder("spec-linear", options)
    seed, draft = ids[-1:], decoder.masked_block(ids[-1:].tolist())
    drafted = torch.randint(0, vocab, (block_size,))

    def causal_pass(block: torch.Tensor, rows: slice) -> None:
        run_alone(decoder.causal_logits(session, block, rows), session)
        session.rollback(context)

    def draft_pass() -> None:
        run_alone(decoder.denoise_logits(session, draft), session)  # rolls itself back

    return {
        "ar_pass_ms": median_ms(lambda: causal_pass(seed, slice(-1, None)), runs)[0],
        "draft_pass_ms": median_ms(lambda: run_alone(decoder.denoise_logits(session, draft), session), runs)[
            0
        ],
        "verify_pass_ms": median_ms(lambda: causal_pass(drafted, slice(None)), runs)[0],
    }


def measure(
    encoder: FastViTHD | QwenViT,
    model: FastVlmForConditionalGeneration,
    resolution: int,
    runs: int,
    repeats: int,
    block_size: int,
) -> dict[str, Any]:
    """One encoder at one resolution: TTFT and its parts, then the per-pass decoding costs.

    Vision and prefill are timed `runs` times, the cheap head and decoding passes `repeats` times.
    """
    side = encoder.input_side(resolution)
    pixels = encoder.random_input(side)
    vision_ms, features = median_ms(lambda: encoder.encode(pixels), runs)
    prompt = torch.randint(0, model.config.text_config.vocab_size, (PROMPT_TOKENS,))
    prefill_ms, hidden = median_ms(lambda: prefill(model, features, prompt), runs)
    head_ms, _ = median_ms(lambda: model.lm_head(hidden).argmax(-1), repeats)
    row = {
        "input_side": side,
        "visual_tokens": features.shape[0],
        "prompt_tokens": features.shape[0] + PROMPT_TOKENS,
        "vision_ms": vision_ms,
        "prefill_ms": prefill_ms,
        "head_ms": head_ms,
        "ttft_ms": vision_ms + prefill_ms + head_ms,
        "runs": runs,
    }
    # decoding passes are costed halfway through the answer, where the cache holds half of it
    return row | decode_pass_ms(model, row["prompt_tokens"] + ANSWER_TOKENS // 2, block_size, repeats)


def answer_ms(
    ttft_ms: float, pass_ms: float, tokens_per_pass: float, answer_tokens: int = ANSWER_TOKENS
) -> float:
    """The prefill yields the first token; the other `answer_tokens - 1` come `tokens_per_pass` per pass."""
    return ttft_ms + (answer_tokens - 1) / tokens_per_pass * pass_ms


def measured_tokens_per_pass(path: Path = BENCH_DEMO) -> tuple[float, str]:
    """spec-linear's tokens/NFE from a `fast-dvlm bench --json` file, else 1.0 (no speculation gain).

    That figure counts the prefill among the passes, so it slightly understates tokens per decoding pass.
    """
    if not path.is_file():
        return 1.0, f"not measured: no {path} to read it from, so no gain from speculation is assumed"
    try:
        value = float(json.loads(path.read_text())["modes"]["spec-linear"]["tokens_per_nfe"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FastDVLMError(f"{path} has no readable modes.spec-linear.tokens_per_nfe ({exc!r})") from None
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
    return value, f"measured by `fast-dvlm bench`: {shown}, modes.spec-linear.tokens_per_nfe"


def run_ttft(
    resolutions: Sequence[int] = RESOLUTIONS,
    tokens_per_pass: float = 1.0,
    tokens_per_pass_source: str = "passed in by the caller",
    repeats: int = 3,
    slow_repeats: int = 1,
    sizes: TTFTSizes | None = None,
    block_size: int = BLOCK_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """TTFT of both encoders at each resolution, their ratio, and 64-token answer latencies.

    Resolutions are interleaved with encoders, so machine noise hits both alike. The ViT at
    `SLOW_RESOLUTION` and above is timed `slow_repeats` times; each row records its run count.
    """
    for resolution in resolutions:  # every bad resolution fails here, before minutes of model building
        FastViTHD.input_side(resolution)
        QwenViT.visual_tokens(QwenViT.input_side(resolution))
    if repeats < 1 or slow_repeats < 1:
        raise FastDVLMError(f"repeats must be at least 1, got {repeats} and {slow_repeats}")
    if tokens_per_pass <= 0:
        raise FastDVLMError(f"tokens per pass must be positive, got {tokens_per_pass}")
    sizes = sizes or TTFTSizes()
    bar = tqdm(total=2 + 2 * len(resolutions), desc="building FastVLM", disable=not progress, leave=False)
    model = build_fastvlm(sizes)
    bar.update()
    bar.set_description("building the Qwen2.5-VL ViT")
    encoders = (FastViTHD(model), QwenViT(build_vit(sizes)))
    bar.update()
    per_resolution: dict[str, Any] = {}
    with torch.inference_mode():
        for resolution in resolutions:
            rows = {}
            for encoder in encoders:
                bar.set_description(f"{encoder.label} at {resolution}²")
                slow = isinstance(encoder, QwenViT) and resolution >= SLOW_RESOLUTION
                runs = min(repeats, slow_repeats) if slow else repeats
                rows[encoder.label] = measure(encoder, model, resolution, runs, repeats, block_size)
                bar.update()
            per_resolution[str(resolution)] = summarise(rows, tokens_per_pass)
    bar.close()
    return {
        "settings": {
            "resolutions": list(resolutions),
            "repeats": repeats,
            "slow_repeats": slow_repeats,
            "slow_resolution": SLOW_RESOLUTION,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "weights": "random",
            "prompt_text_tokens": PROMPT_TOKENS,
            "answer_tokens": ANSWER_TOKENS,
            "block_size": block_size,
            "tokens_per_pass": tokens_per_pass,
            "tokens_per_pass_source": tokens_per_pass_source,
        },
        "params_m": {
            "FastViTHD (with projector)": params_m(
                model.model.vision_tower, model.model.multi_modal_projector
            ),
            "Qwen2.5-VL ViT (with merger)": params_m(encoders[1].model),
            "language model": params_m(model.model.language_model),
        },
        "resolutions": per_resolution,
    }


def resummarise(result: dict[str, Any], tokens_per_pass: float, source: str) -> dict[str, Any]:
    """A run's `result` with its answer latencies costed for another tokens-per-pass figure (a newer
    `fast-dvlm bench`, say) from the pass times it stored: nothing is timed again."""
    settings = result["settings"] | {
        "tokens_per_pass": tokens_per_pass,
        "tokens_per_pass_source": source,
        "answers_recosted": True,  # from the stored pass times, by --recost
    }
    per_resolution = {
        resolution: summarise(row["encoders"], tokens_per_pass)
        for resolution, row in result["resolutions"].items()
    }
    return result | {"settings": settings, "resolutions": per_resolution}


def summarise(rows: dict[str, dict[str, Any]], tokens_per_pass: float) -> dict[str, Any]:
    """Both encoders' rows at one resolution, their ViT/FastViTHD ratios and the answer latencies."""
    fast, vit = rows[FastViTHD.label], rows[QwenViT.label]
    spec_pass_ms = (fast["draft_pass_ms"] + fast["verify_pass_ms"]) / 2  # spec-linear alternates the two
    return {
        "encoders": rows,
        "vit_over_fastvithd": {
            key: vit[key] / fast[key] for key in ("visual_tokens", "vision_ms", "prefill_ms", "ttft_ms")
        },
        "answer_ms": {
            "ViT+AR": answer_ms(vit["ttft_ms"], vit["ar_pass_ms"], 1.0),
            "FastViTHD+AR": answer_ms(fast["ttft_ms"], fast["ar_pass_ms"], 1.0),
            "FastViTHD+Fast-dVLM spec-linear": answer_ms(fast["ttft_ms"], spec_pass_ms, tokens_per_pass),
        },
    }


def params_m(*modules: nn.Module) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "### Time to first token: FastViTHD vs the Qwen2.5-VL-3B ViT, same Qwen2-0.5B-size LM",
        "",
        f"Random weights, {s['dtype']}, {s['threads']} thread(s); medians of {s['repeats']} runs after a "
        f"warm-up (the ViT at {s['slow_resolution']}² and above: {s['slow_repeats']}; see `runs`). Prompt = "
        f"visual tokens + {s['prompt_text_tokens']} text tokens. TTFT = vision + prefill + first-token head.",
        "",
        "| resolution | encoder | input side | visual tokens | vision ms | prefill ms | head ms | TTFT ms "
        "| runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for resolution, r in result["resolutions"].items():
        for label, e in r["encoders"].items():
            lines.append(
                f"| {resolution}² | {label} | {e['input_side']} | {e['visual_tokens']} | "
                f"{e['vision_ms']:.0f} | {e['prefill_ms']:.0f} | {e['head_ms']:.1f} | {e['ttft_ms']:.0f} | "
                f"{e['runs']} |"
            )
    lines += [
        "",
        "| resolution | visual tokens ViT / FastViTHD | vision ViT / FastViTHD | TTFT ViT / FastViTHD |",
        "|---|---|---|---|",
    ]
    for resolution, r in result["resolutions"].items():
        q = r["vit_over_fastvithd"]
        lines.append(
            f"| {resolution}² | {q['visual_tokens']:.1f}x | {q['vision_ms']:.1f}x | {q['ttft_ms']:.1f}x |"
        )
    n = s["answer_tokens"]
    lines += [
        "",
        f"#### {n}-token answer, ms = TTFT + {n - 1} / (tokens per pass) x (cost of one pass)",
        "",
        f"Passes costed over a cache of prompt + {n // 2} tokens: AR = 1-token pass; spec-linear = mean "
        f"of its B={s['block_size']} draft and verify passes. Tokens per spec-linear pass: "
        f"**{s['tokens_per_pass']:.2f}, {s['tokens_per_pass_source']}** (random weights accept nothing, so "
        "this benchmark cannot measure it)."
        + (" Answers costed from stored pass times (`--recost`)." if s.get("answers_recosted") else ""),
        "",
        "| resolution | ViT+AR | FastViTHD+AR | FastViTHD+Fast-dVLM spec-linear | spec-linear vs ViT+AR | "
        "AR pass ms | draft / verify pass ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for resolution, r in result["resolutions"].items():
        a, fast = r["answer_ms"], r["encoders"][FastViTHD.label]
        spec = a["FastViTHD+Fast-dVLM spec-linear"]
        lines.append(
            f"| {resolution}² | {a['ViT+AR']:.0f} | {a['FastViTHD+AR']:.0f} | {spec:.0f} | "
            f"{a['ViT+AR'] / spec:.1f}x | {fast['ar_pass_ms']:.0f} | "
            f"{fast['draft_pass_ms']:.0f} / {fast['verify_pass_ms']:.0f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """TTFT (and vision alone) against resolution for both encoders, and their visual tokens."""
    try:
        import matplotlib
    except ImportError:
        raise FastDVLMError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = [int(r) for r in result["resolutions"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, colour in ((FastViTHD.label, "tab:orange"), (QwenViT.label, "tab:blue")):
        rows = [r["encoders"][label] for r in result["resolutions"].values()]
        left.plot(resolutions, [e["ttft_ms"] for e in rows], "o-", color=colour, label=f"{label}: TTFT")
        left.plot(resolutions, [e["vision_ms"] for e in rows], "o--", color=colour, label=f"{label}: vision")
        right.plot(resolutions, [e["visual_tokens"] for e in rows], "o-", color=colour, label=label)
    left.set(yscale="log", xlabel="image side (pixels)", ylabel="ms", title="Time to first token")
    right.set(yscale="log", xlabel="image side (pixels)", ylabel="visual tokens", title="Visual tokens")
    for ax in (left, right):
        ax.set_xticks(resolutions)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_resolutions(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FastDVLMError(f"--resolutions takes comma-separated integers, got {text!r}") from None


def ttft_report(
    resolutions: Sequence[int],
    repeats: int,
    tokens_per_pass: float | None = None,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    slow_repeats: int = 1,
    timed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the benchmark (or, given the JSON of a `timed` run, cost its answers again without timing
    anything), print its Markdown tables and write what was asked for."""
    if tokens_per_pass is None:
        tokens_per_pass, source = measured_tokens_per_pass()
    else:
        source = "given with --tokens-per-pass"
    if timed is None:
        result = run_ttft(resolutions, tokens_per_pass, source, repeats, slow_repeats)
    else:
        result = resummarise(timed, tokens_per_pass, source)
    table = markdown(result)
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(table + "\n")
    if plot_path:
        plot(result, plot_path)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ttft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)), help="square image sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default: 3)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs for the ViT at 1024² (default: 1)")
    parser.add_argument(
        "--tokens-per-pass",
        type=float,
        default=None,
        help="spec-linear's measured tokens/NFE (default: benchmarks/results/bench_demo.json, else 1.0)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ttft", help="writes OUT.json, .md, .png")
    parser.add_argument(
        "--recost",
        type=Path,
        default=None,
        metavar="JSON",
        help="time nothing: cost this earlier run's answers again with the current tokens per pass",
    )
    args = parser.parse_args(argv)
    try:
        resolutions = parse_resolutions(args.resolutions)
        timed = None if args.recost is None else json.loads(args.recost.read_text())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        ttft_report(
            resolutions,
            args.repeats,
            args.tokens_per_pass,
            json_path=args.out.with_suffix(".json"),
            markdown_path=args.out.with_suffix(".md"),
            plot_path=args.out.with_suffix(".png"),
            slow_repeats=args.slow_repeats,
            timed=timed,
        )
    except FastDVLMError as exc:
        print(f"ttft: error: {first_line(exc)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
