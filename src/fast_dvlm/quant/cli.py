"""`fast-dvlm quantize`: FP8-quantise a model's language model and write a compressed-tensors checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import SCHEMES

DTYPES = ("bfloat16", "float16", "float32")  # torch dtype names; torch is imported when the command runs


def add_quantize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="FP8-quantise the language model and save the checkpoint",
        description="Quantise the language model's linear layers to FP8 e4m3 (per-channel static weight "
        "scales; fp8-w8a8 adds per-token dynamic activation scales); the vision encoder, embeddings and "
        "lm_head stay in high precision. Writes a compressed-tensors checkpoint that SGLang and vLLM "
        "load on a GPU and `fast-dvlm generate/bench --model DIR` runs anywhere (emulated).",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory, demo, or tiny:FAMILY")
    parser.add_argument("--scheme", required=True, choices=list(SCHEMES), help="what to quantise")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=DTYPES,
        help="dtype of what stays in high precision (vision tower, embeddings, lm_head, norms); "
        "the FP8 scales are always float32 (default: bfloat16)",
    )
    parser.add_argument(
        "--emulate",
        action="store_true",
        help="apply the FP8 math in fp32 (any machine) instead of torchao's FP8 kernels (GPU, SM 8.9+)",
    )
    parser.set_defaults(run=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> None:
    import torch

    from ..vlm import load
    from .checkpoint import save_quantized
    from .quantize import language_model_linears, quantize

    vlm = load(args.model)  # in float32: the FP8 codes come from the weights at full precision
    layers = len(language_model_linears(vlm))
    quantize(vlm, args.scheme, emulate=args.emulate).model.to(getattr(torch, args.dtype))
    save_quantized(vlm, args.out)
    size = sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors"))
    print(f"{args.out}: {layers} language-model linear layers in FP8 ({args.scheme}), {size / 1e6:.1f} MB")
