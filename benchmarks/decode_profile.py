"""Where decoding time goes: torch.profiler over whole answers, self-CPU time grouped by what it does.

For the shipped demo model and the `large` random-weight size of decode_speed.py, one prompt with
one image is answered (up to 64 new tokens) with `ar`, `spec-linear` and `diffusion τ0.9`. Each
profiled run is interleaved with an unprofiled one, so the profiler's own cost can be told apart.

Decoding is split into (the prompt encoding, vision encoder and prefill pass are counted apart):
- KV cache: transformers' cache update (cat) and crop (rollback) (`--engine transformers`; the
  lean path writes its preallocated buffer in place, inside the LM);
- masks (ours): the decoders' block attention masks; masks (transformers): its causal-mask code;
- lm_head: the output head; LM GEMMs: the language model's linear layers; attention: sdpa;
- other LM ops: norms, rotary embeddings, activations, residual adds, reshapes;
- decoder bookkeeping: every other operator (argmax, softmax, id tensors, block ids);
- Python overhead inside the LM forward: its wall time minus its operators (the lean path's layer
  loop by default, transformers' code with `--engine transformers`);
- Python overhead elsewhere: what is left (the decoders, the session, the profiler itself).

The labels are put on by wrapping functions for the profiled runs only; the engine carries none.
Then, unless --no-compile, the same answers with and without `DiffusionVLM.compile()`, interleaved;
compile times are for a cold inductor cache (a fresh one, unless --warm-compile-cache).

    OMP_NUM_THREADS=1 python benchmarks/decode_profile.py --out benchmarks/results/decode_profile
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import cache_utils

import fast_dvlm
from fast_dvlm import DiffusionVLM
from fast_dvlm.data.build import make_example
from fast_dvlm.data.task import DEMO_SIDE
from fast_dvlm.decoding.base import Decoder
from fast_dvlm.decoding.lean import LeanTextModel
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.vlm import GenerationOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import HEAD_ROWS, SIZES, ModeSpec, scene  # noqa: E402  (the same models as the speed tables)

MODES = (
    ModeSpec("ar", "ar"),
    ModeSpec("spec-linear", "spec-linear"),
    ModeSpec("diffusion τ0.9", "diffusion", {"threshold": 0.9}),
)
COMPILE_MODES = MODES[:2]
IMAGE, PREFILL, CACHE, OUR_MASKS, HF_MASKS, HEAD, LM = (
    "image encoding",
    "prompt + prefill",
    "KV cache",
    "masks (ours)",
    "masks (transformers)",
    "lm_head",
    "language model",
)
GEMM, ATTENTION, OTHER_LM, BOOKKEEPING, LM_PYTHON, OVERHEAD = (
    "LM GEMMs",
    "attention (sdpa)",
    "other LM ops",
    "decoder bookkeeping",
    "Python overhead inside the LM forward",
    "Python overhead elsewhere (engine, profiler)",
)
OPS = (GEMM, ATTENTION, HEAD, OTHER_LM, CACHE, OUR_MASKS, HF_MASKS, BOOKKEEPING)
CATEGORIES = OPS + (LM_PYTHON, OVERHEAD)
LABELS = (IMAGE, PREFILL, CACHE, OUR_MASKS, HF_MASKS, HEAD, LM)
GEMM_OPS = {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm"}
ATTENTION_OPS = {"aten::scaled_dot_product_attention"}
PREALLOCATION_BAR = 0.03  # a preallocated cache is only worth its complexity above this share


def build_models(sizes: list[str]) -> dict[str, DiffusionVLM]:
    """The demo model and the random-weight sizes of decode_speed.py (same builder, same head width)."""
    models = {"demo": fast_dvlm.load("demo")}
    for name in sizes:
        models[name] = DiffusionVLM(
            *build_tiny_model("qwen2_5_vl", SIZES[name], min_embedding_rows=HEAD_ROWS)
        )
    return models


def prompt_for(name: str) -> tuple[str, list]:
    """A fresh procedural scene for the demo model (long step-by-step answer), a drawn one otherwise."""
    if name == "demo":
        example = make_example("steps", "test", 0, DEMO_SIDE)
        return example.qas[0].question, [example.image]
    return "Describe picture 0 step by step.", [scene(0)]


def labelled(fn: Callable, label: str, timings: dict[str, float] | None = None) -> Callable:
    """`fn` inside a profiler range named `label` (and its wall time added to `timings[label]`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        with record_function(label):
            result = fn(*args, **kwargs)
        if timings is not None:
            timings[label] += time.perf_counter() - start
        return result

    return wrapper


@contextmanager
def patched(owner: object, attr: str, label: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    original = owner.__dict__.get(attr)
    setattr(owner, attr, labelled(getattr(owner, attr), label, timings))
    try:
        yield
    finally:
        if original is None:
            delattr(owner, attr)  # an instance attribute over the class's method: remove it again
        else:
            setattr(owner, attr, original)


@contextmanager
def labels(vlm: DiffusionVLM, timings: dict[str, float]) -> Iterator[None]:
    """Profiler ranges around the parts of an answer; only the prefill's wall time is kept."""
    text_model = vlm.family.language_model(vlm.model)
    modeling = sys.modules[type(text_model).__module__]
    with ExitStack() as stack:
        stack.enter_context(patched(vlm, "start", PREFILL, timings))
        stack.enter_context(patched(vlm.family, "embed", IMAGE))  # runs the vision encoder
        stack.enter_context(patched(text_model, "forward", LM))  # --engine transformers
        for method in ("forward", "forward_rows"):  # the lean path (the default engine)
            stack.enter_context(patched(LeanTextModel, method, LM))
        stack.enter_context(patched(vlm.family.lm_head(vlm.model), "forward", HEAD))
        stack.enter_context(patched(Decoder, "block_mask", OUR_MASKS))
        for name in ("create_causal_mask", "create_sliding_window_causal_mask"):
            if hasattr(modeling, name):
                stack.enter_context(patched(modeling, name, HF_MASKS))
        for method in ("update", "crop"):
            stack.enter_context(patched(cache_utils.DynamicLayer, method, CACHE))
        yield


def categorise(events: list[FunctionEvent]) -> dict[str, float]:
    """Seconds of decoding by category (prefill excluded), from one profiled answer.

    An operator's inclusive time is counted once, at the outermost operator; its category comes
    from the labels around it (the innermost one). Python time inside the language model's forward
    is its ranges' wall time minus the operators in them. `IMAGE` counts the image encodings.
    """
    label_set = set(LABELS)
    totals: dict[str, float] = defaultdict(float)
    lm_ops = 0.0
    for event in events:
        totals[IMAGE] += event.name == IMAGE
        if event.name == LM and not under(event, {PREFILL}):
            totals[LM_PYTHON] += event.cpu_time_total / 1e6
        if event.name in label_set:
            continue
        around, parent, nested = [], event.cpu_parent, False
        while parent is not None and not nested:
            nested = parent.name not in label_set
            around.append(parent.name)
            parent = parent.cpu_parent
        if nested or PREFILL in around:
            continue
        seconds = event.cpu_time_total / 1e6
        inner = around[0] if around else None
        if inner == LM:
            inner = GEMM if event.name in GEMM_OPS else ATTENTION if event.name in ATTENTION_OPS else OTHER_LM
        totals[inner or BOOKKEEPING] += seconds
        lm_ops += seconds if LM in around else 0.0
    totals[LM_PYTHON] -= lm_ops
    return totals


def under(event: FunctionEvent, names: set[str]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def run(
    vlm: DiffusionVLM,
    spec: ModeSpec,
    prompt: tuple[str, list],
    max_new_tokens: int,
    engine: str | None = None,
) -> GenerationOutput:
    """One answer; `engine` None: the model's own (lean, or transformers' once compiled)."""
    text, images = prompt
    return vlm.generate(text, images, spec.mode, max_new_tokens, **spec.settings, engine=engine)


def profile_mode(
    vlm: DiffusionVLM,
    spec: ModeSpec,
    prompt: tuple[str, list],
    max_new_tokens: int,
    repeats: int,
    engine: str = "lean",
) -> dict:
    """Interleave unprofiled and profiled answers; decoding (prefill excluded) split by category."""
    run(vlm, spec, prompt, max_new_tokens, engine)  # warm-up
    plain_decode, profiled_decode, totals = [], [], defaultdict(float)
    for _ in range(repeats):
        timings: dict[str, float] = defaultdict(float)
        with labels(vlm, timings):
            out = run(vlm, spec, prompt, max_new_tokens, engine)
            plain_decode.append(out.seconds - timings[PREFILL])
            timings.clear()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                profiled = run(vlm, spec, prompt, max_new_tokens, engine)
        profiled_decode.append(profiled.seconds - timings[PREFILL])
        for category, seconds in categorise(prof.events()).items():
            totals[category] += seconds / repeats
    decode_s, profiled_s = statistics.median(plain_decode), statistics.mean(profiled_decode)
    passes = out.nfe - out.prefill_nfe
    shares = {c: totals.get(c, 0.0) / profiled_s for c in CATEGORIES[:-1]}
    shares[OVERHEAD] = 1 - sum(shares.values())
    return {
        "tokens": len(out.token_ids),
        "decode_passes": passes,
        "tokens_per_nfe": out.tokens_per_nfe,
        "image_encodings": totals[IMAGE],
        "ms_per_pass": 1000 * decode_s / passes,
        "profiled_ms_per_pass": 1000 * profiled_s / passes,
        "shares": shares,
    }


def compile_compare(
    name: str, vlm: DiffusionVLM, prompt: tuple[str, list], max_new_tokens: int, repeats: int
) -> dict:
    """tokens/s of whole answers with and without `compile()`, interleaved, medians: eager on the
    default (lean) path, compiled on transformers' forward (the one `compile()` compiles); the first
    compiled answer of each mode (where its graphs are compiled) is timed apart as its warm-up."""
    compiled = copy.deepcopy(vlm).compile()
    result: dict = {"modes": {}}
    for spec in COMPILE_MODES:
        graphs_before, start = counters["stats"]["unique_graphs"], time.perf_counter()
        warm = run(compiled, spec, prompt, max_new_tokens)
        warmup_s = time.perf_counter() - start
        graphs = counters["stats"]["unique_graphs"] - graphs_before
        run(vlm, spec, prompt, max_new_tokens)
        eager_runs, compiled_runs = [], []
        for _ in range(repeats):
            eager_runs.append(run(vlm, spec, prompt, max_new_tokens))
            compiled_runs.append(run(compiled, spec, prompt, max_new_tokens))
        same = all(r.token_ids == eager_runs[0].token_ids for r in [warm, *eager_runs, *compiled_runs])
        tokens = len(eager_runs[0].token_ids)
        eager = tokens / statistics.median(r.seconds for r in eager_runs)
        fast = tokens / statistics.median(r.seconds for r in compiled_runs)
        result["modes"][spec.label] = {
            "warmup_s": warmup_s,
            "graphs": graphs,
            "eager_tokens_per_s": eager,
            "compiled_tokens_per_s": fast,
            "speedup": fast / eager,
            "identical_tokens": same,
        }
        print(
            f"{name} {spec.label}: warm-up {warmup_s:.0f} s, eager {eager:.1f}, compiled {fast:.1f} tokens/s"
        )
    return result


def shares_table(results: dict) -> list[str]:
    columns = [(name, label) for name, m in results["profile"].items() for label in m["modes"]]
    lines = ["| category | " + " | ".join(f"{n} {label}" for n, label in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for category in CATEGORIES:
        cells = []
        for name, label in columns:
            r = results["profile"][name]["modes"][label]
            share = r["shares"][category]
            cells.append(f"{100 * share:.1f}% ({r['profiled_ms_per_pass'] * share:.2f})")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return lines


def findings(results: dict) -> list[str]:
    """What the numbers decide: preallocating the cache, per-token work, re-encoding, compiling."""
    runs = [(f"{n} {label}", r) for n, m in results["profile"].items() for label, r in m["modes"].items()]
    cache_name, cache = max(runs, key=lambda item: item[1]["shares"][CACHE])
    ours = max(r["shares"][OUR_MASKS] + r["shares"][BOOKKEEPING] for _, r in runs)
    encodings = sorted({r["image_encodings"] for _, r in runs})
    top = max(runs, key=lambda item: item[1]["shares"][LM_PYTHON])
    pays = cache["shares"][CACHE] >= PREALLOCATION_BAR
    lean = results.get("engine", "lean") == "lean"
    lines = []
    for name, model in results["profile"].items():
        maths = [sum(r["shares"][c] for c in (GEMM, ATTENTION, HEAD)) for r in model["modes"].values()]
        python = [r["shares"][LM_PYTHON] + r["shares"][OVERHEAD] for r in model["modes"].values()]
        lines.append(
            f"- {name}: the maths (GEMMs, attention, lm_head) is {100 * min(maths):.0f}-"
            f"{100 * max(maths):.0f}% of decoding, Python overhead {100 * min(python):.0f}-"
            f"{100 * max(python):.0f}%."
        )
    if not lean:
        lines.append(
            f"- Preallocated KV cache: {'worth building' if pays else 'not built'}. The cache's own "
            f"operators (cat on every pass, crop on rollback) are at most "
            f"{100 * cache['shares'][CACHE]:.1f}% of decoding ({cache_name}); "
            "that is the most preallocation could save, "
            f"{'above' if pays else 'below'} the {100 * PREALLOCATION_BAR:.0f}% bar (a preallocated "
            "buffer still copies each pass's new keys in; it saves re-copying the old ones)."
        )
    lines += [
        f"- Per-token work that could be per block: none found. The decoders' own operators (block masks, "
        f"argmax/softmax, id tensors, block ids) are at most {100 * ours:.1f}% of decoding. Block masks are "
        "built at most once per pass (diffusion: once per block), `.tolist()`/`int()` run once per pass "
        "on the pass's result, and `ar` is one token per pass by definition.",
        f"- Image re-encoding: none; the vision encoder ran {' or '.join(f'{e:g}' for e in encodings)} "
        "time(s) per answer (the prefill); decoding passes embed token ids only.",
        "- The largest share outside the maths is the Python inside the LM forward "
        f"({'the lean path' if lean else 'transformers'}, layer by layer): "
        f"up to {100 * top[1]['shares'][LM_PYTHON]:.0f}% ({top[0]})."
        + ("" if lean else " That is what `compile()` targets."),
    ]
    for name, c in results.get("compile", {}).items():
        modes = c["modes"].values()
        warmup, graphs = sum(m["warmup_s"] for m in modes), sum(m["graphs"] for m in modes)
        lines.append(
            f"- compile, {name}: {warmup:.0f} s of warm-up ({graphs} graphs), then "
            + ", ".join(f"{label} {m['speedup']:.2f}x" for label, m in c["modes"].items())
            + f"; token ids identical: {all(m['identical_tokens'] for m in modes)}."
        )
    return lines


def markdown(results: dict) -> str:
    lines = [
        "# Where decoding time goes",
        "",
        f"`{results['command']}` ({results['threads']} torch thread(s), CPU, float32, on a machine shared",
        "with other jobs unless said otherwise). Decoding only: the prompt encoding, vision encoder and",
        "prefill are left out.",
        "Operator times are torch.profiler's (mean of the profiled runs); shares are of the profiled",
        "decoding wall time, whose last row is what is left after all operators and the LM's own Python.",
        "",
        "## Per forward pass",
        "",
        "| model | mode | tokens | passes | tokens/NFE | ms/pass | profiled ms/pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in results["profile"].items():
        for label, r in model["modes"].items():
            lines.append(
                f"| {name} | {label} | {r['tokens']} | {r['decode_passes']} | {r['tokens_per_nfe']:.2f} | "
                f"{r['ms_per_pass']:.2f} | {r['profiled_ms_per_pass']:.2f} |"
            )
    lines += ["", "## Share of decoding time by category (ms per pass)", "", *shares_table(results)]
    if results.get("compile"):
        lines += ["", "## torch.compile (`DiffusionVLM.compile()`): whole answers, medians, interleaved", ""]
        lines += [
            "Eager: the default lean path. Compiled: transformers' forward under torch.compile (what",
            "`compile()` compiles; a compiled model decodes on that engine).",
            "",
        ]
        lines.append(
            "| model | mode | warm-up s | graphs | eager tokens/s | compiled tokens/s | speed-up | same ids |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, c in results["compile"].items():
            for label, m in c["modes"].items():
                lines.append(
                    f"| {name} | {label} | {m['warmup_s']:.0f} | {m['graphs']} | "
                    f"{m['eager_tokens_per_s']:.1f} | {m['compiled_tokens_per_s']:.1f} | "
                    f"{m['speedup']:.2f}x | {m['identical_tokens']} |"
                )
    lines += ["", "## Findings", "", *findings(results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="*", default=["large"], choices=list(SIZES), help="random-weight sizes"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="profiled and unprofiled runs each (default: 3)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument(
        "--engine",
        choices=["lean", "transformers"],
        default="lean",
        help="the decoding path profiled (default: lean, what generate uses)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="keep inductor's usual on-disk cache (default: a fresh one, so warm-up is a first run's)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_profile"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS")  # the command as it was run
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python benchmarks/decode_profile.py "
    command += " ".join(sys.argv[1:])
    results: dict = {
        "command": command.strip(),
        "threads": args.threads,
        "engine": args.engine,
        "profile": {},
        "compile": {},
    }
    models = build_models(args.sizes)
    for name, vlm in models.items():
        results["profile"][name] = {"modes": {}}
        for spec in MODES:
            r = profile_mode(vlm, spec, prompt_for(name), args.max_new_tokens, args.repeats, args.engine)
            results["profile"][name]["modes"][spec.label] = r
            print(f"{name} {spec.label}: {r['ms_per_pass']:.2f} ms/pass", flush=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))  # nothing lost on a crash
    if not args.no_compile:
        with tempfile.TemporaryDirectory(prefix="inductor-") as fresh:
            if not args.warm_compile_cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh  # read by inductor at every use
            for name, vlm in models.items():
                prompt = prompt_for(name)
                results["compile"][name] = compile_compare(
                    name, vlm, prompt, args.max_new_tokens, args.repeats
                )
                args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    print(text)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}.md and .json")


if __name__ == "__main__":
    main()
