"""How much FP8 costs: checkpoint size, per-layer and final-logit error against fp32, measured on CPU.

For each scheme (fp8-w8a8, fp8-weight), the emulated quantised model is compared with the fp32 one
on one prompt and image from every procedural task:
1. checkpoint size: the quantised checkpoint against the unquantised one, both saved with the
   high-precision parts in `--dtype` (bfloat16, as a GPU serves them; the reference is the same
   model, unquantised, so the ratio is what quantising saves);
2. per-layer error: each language-model linear layer run on the fp32 model's own inputs to it,
   relative L2 error of its output (what that layer's quantisation alone costs), and the hidden
   state after each decoder layer of the quantised model against the fp32 one (the accumulated error);
3. final-logit error over the prompts' positions: relative L2, max |Δ|, mean KL(fp32 ‖ fp8), and how
   often the argmax (the greedy token) is the same; plus greedy `ar` answers that come out identical.

    python benchmarks/fp8_error.py [--model demo|tiny:qwen2_5_vl|DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch
from torch import nn

from fast_dvlm import load
from fast_dvlm.data import TASKS
from fast_dvlm.prompt import encode_prompt
from fast_dvlm.quant import SCHEMES, quantize, save_quantized
from fast_dvlm.quant.quantize import language_model_linears

DEMO = Path(__file__).resolve().parents[1] / "src" / "fast_dvlm" / "assets" / "demo"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def prompts(seed: int = 0) -> list[tuple[str, object]]:
    """One (question, image) per procedural task, from the test split's generator."""
    rng = random.Random(seed)
    examples = [task.make(rng, "test") for task in TASKS.values()]
    return [(example.qas[0].question, example.image) for example in examples]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm().clamp(min=1e-12))


def checkpoint_bytes(model_name: str, scheme: str | None, dtype: torch.dtype) -> int:
    vlm = load(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        if scheme is None:
            vlm.model.to(dtype)
            vlm.save_pretrained(tmp)
        else:
            quantize(vlm, scheme, emulate=True).model.to(dtype)
            save_quantized(vlm, tmp)
        return sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))


def forward(vlm, batches: list) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
    """Logits [L, V] and the language model's hidden states per decoder layer, for each prompt."""
    logits, hidden = [], []
    with torch.inference_mode():
        for batch in batches:
            out = vlm.model(**batch, output_hidden_states=True)
            logits.append(out.logits[0].float())
            hidden.append(tuple(h[0].float() for h in out.hidden_states))
    return logits, hidden


def layer_inputs(vlm, batches: list) -> dict[str, list[torch.Tensor]]:
    """What each language-model linear layer receives, prompt by prompt, in the fp32 model."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in language_model_linears(vlm)}
    hooks = [
        linear.register_forward_hook(lambda _m, args, _out, name=name: seen[name].append(args[0].detach()))
        for name, linear in language_model_linears(vlm).items()
    ]
    forward(vlm, batches)
    for hook in hooks:
        hook.remove()
    return seen


def measure(model_name: str, scheme: str, dtype: torch.dtype, max_new_tokens: int) -> dict:
    reference = load(model_name)
    fp32_layers = {name: linear for name, linear in language_model_linears(reference).items()}
    items = prompts()
    batches = [encode_prompt(reference.processor, q, [image]) for q, image in items]
    inputs = layer_inputs(reference, batches)
    ref_logits, ref_hidden = forward(reference, batches)

    quantised = quantize(load(model_name), scheme, emulate=True)
    lm = quantised.family.language_model(quantised.model)
    per_linear = {}
    with torch.inference_mode():
        for name, xs in inputs.items():
            fp8: nn.Module = lm.get_submodule(name)
            errors = [relative_error(fp8(x), fp32_layers[name](x)) for x in xs]
            per_linear[name] = sum(errors) / len(errors)
    logits, hidden = forward(quantised, batches)
    per_block = [
        sum(relative_error(h[i], r[i]) for h, r in zip(hidden, ref_hidden, strict=True)) / len(hidden)
        for i in range(1, len(ref_hidden[0]))
    ]
    flat, ref_flat = torch.cat(logits), torch.cat(ref_logits)
    kl = torch.nn.functional.kl_div(
        flat.log_softmax(-1), ref_flat.log_softmax(-1), log_target=True, reduction="none"
    )
    same_answers = sum(
        quantised.generate(q, [image], "ar", max_new_tokens).token_ids
        == reference.generate(q, [image], "ar", max_new_tokens).token_ids
        for q, image in items
    )
    unquantised_bytes = checkpoint_bytes(model_name, None, dtype)
    fp8_bytes = checkpoint_bytes(model_name, scheme, dtype)
    return {
        "checkpoint_bytes": {
            "unquantised": unquantised_bytes,
            "fp8": fp8_bytes,
            "ratio": fp8_bytes / unquantised_bytes,
        },
        "linear_relative_error": {
            "mean": sum(per_linear.values()) / len(per_linear),
            "max": max(per_linear.values()),
            "per_layer": per_linear,
        },
        "decoder_layer_hidden_relative_error": per_block,
        "logits": {
            "relative_l2": relative_error(flat, ref_flat),
            "max_abs": float((flat - ref_flat).abs().max()),
            "mean_kl": float(kl.sum(-1).mean()),
            "top1_agreement": float((flat.argmax(-1) == ref_flat.argmax(-1)).float().mean()),
            "positions": flat.shape[0],
        },
        "greedy_answers_identical": f"{same_answers}/{len(items)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "demo" if (DEMO / "config.json").is_file() else "tiny:qwen2_5_vl"
    parser.add_argument("--model", default=default, help=f"model to quantise (default: {default})")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=list(DTYPES), help="high-precision parts on disk"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="length of the compared greedy answers"
    )
    parser.add_argument("--out", default="benchmarks/results/fp8_error.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {
        "model": args.model,
        "dtype_on_disk": args.dtype,
        "prompts": len(TASKS),
        "schemes": {s: measure(args.model, s, DTYPES[args.dtype], args.max_new_tokens) for s in SCHEMES},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for scheme, r in results["schemes"].items():
        print(
            f"{scheme}: size x{r['checkpoint_bytes']['ratio']:.3f}, linear rel. err. mean "
            f"{r['linear_relative_error']['mean']:.4f} max {r['linear_relative_error']['max']:.4f}, "
            f"logits rel. L2 {r['logits']['relative_l2']:.4f}, "
            f"top-1 agreement {r['logits']['top1_agreement']:.3f}, "
            f"identical answers {r['greedy_answers_identical']}"
        )


if __name__ == "__main__":
    main()
