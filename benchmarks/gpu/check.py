"""The GPU check kit: everything a short loan of a GPU should measure, in one run (see check.sh).

Each part is guarded: a part that fails records its error and the others still run. Results go to
`OUT/results.json` (everything) and `OUT/results.md` (the tables). `--dry-run` runs every part on
the CPU at tiny sizes, so the kit is tested with the rest of the suite and cannot rot between loans.
Nothing is downloaded: real-size models are random weights built from configs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import fast_dvlm
from fast_dvlm.data import get_task
from fast_dvlm.data.build import build_splits
from fast_dvlm.data.task import DEMO_SIDE
from fast_dvlm.eval.accuracy import read_items
from fast_dvlm.eval.bench import BENCH_MODES, answer
from fast_dvlm.models.family import TinySize

from . import fp8, passes, train_step
from .models import E2E_SHAPE, LM_SHAPES, TINY_LM_SHAPES, VLM_3B, build_lm

ROOT = Path(__file__).resolve().parents[2]
BENCH_DEMO = ROOT / "benchmarks/results/bench_demo.json"  # the demo's CPU bench: its acceptance traces
TEST_FILES = [
    "tests/test_decoding.py",
    "tests/test_ar.py",
    "tests/test_conversion.py",
    "tests/test_quant.py",
    "tests/test_released.py",
]
DRY_TESTS = [
    "tests/test_decoding.py::test_accepted_length_on_toy_drafts",
    "tests/test_decoding.py::test_unmask_on_a_toy_vocabulary",
]
TESTS_TIMEOUT = 240  # seconds: the device tests may not eat the other parts' share of the loan
LOSSLESS = {
    "base-ar": "base-ar",
    "hf-generate": "base-ar",
    "ar": "ar",
    "ar-before": "ar",
    "spec-linear": "ar",
    "spec-linear-before": "ar",
    "spec-quadratic": "ar",
    "spec-quadratic-before": "ar",
}


@dataclass
class Sizes:
    """Everything that differs between a real run and a dry run."""

    device: str
    dtype: torch.dtype
    tests: list[str]
    bench_per_task: int
    bench_tasks: tuple[str, ...] | None  # None: all tasks
    bench_tokens: int
    shapes: dict[str, dict]
    e2e_shape: str
    counts: list[int]
    context: int
    repeats: int
    new_tokens: int
    vlm: TinySize
    train_batch: int
    answer_words: int
    real_vocab: bool
    fp8_counts: list[int] = field(default_factory=lambda: [1, 32, 256, 1024])


def real_sizes() -> Sizes:
    return Sizes(
        device="cuda", dtype=torch.bfloat16, tests=TEST_FILES,
        bench_per_task=1, bench_tasks=None, bench_tokens=128,
        shapes=LM_SHAPES, e2e_shape=E2E_SHAPE, counts=[2**k for k in range(11)], context=1024, repeats=5,
        new_tokens=256, vlm=VLM_3B, train_batch=2, answer_words=150, real_vocab=True,
    )  # fmt: skip


def dry_sizes() -> Sizes:
    return Sizes(
        device="cpu", dtype=torch.float32, tests=DRY_TESTS,
        bench_per_task=1, bench_tasks=("counting", "arithmetic"), bench_tokens=12,
        shapes=TINY_LM_SHAPES, e2e_shape="tiny", counts=[1, 2, 4, 8, 16, 64], context=32, repeats=1,
        new_tokens=24, vlm=TinySize(image_size=64), train_batch=2, answer_words=8, real_vocab=False,
        fp8_counts=[1, 8],
    )  # fmt: skip


# --- the parts -------------------------------------------------------------------------------------


def part_tests(sizes: Sizes, out: Path) -> dict:
    """The equivalence tests with the shared tiny models on the device (FAST_DVLM_DEVICE)."""
    report = out / "tests.xml"
    env = os.environ | {"FAST_DVLM_DEVICE": sizes.device}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *sizes.tests,
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return counts | {"exit_code": run.returncode, "failed": failed, "tail": run.stdout[-2000:]}


def part_bench(sizes: Sizes, out: Path) -> dict:
    """`fast-dvlm bench`'s modes on a subset of the demo's test split, on the CPU and on the device:
    the lossless modes must give the CPU's answers token for token (and `ar`'s on the device)."""
    split = build_splits(
        out / "bench-data", {"test": sizes.bench_per_task}, DEMO_SIDE, progress=False, splits=("test",)
    )["test"]
    items = [i for i in read_items(split, sizes.bench_per_task) if i.task in (sizes.bench_tasks or [i.task])]
    answers: dict[str, dict[str, list]] = {}
    for device in dict.fromkeys(["cpu", sizes.device]):  # once when the device is the CPU
        models = {"base": fast_dvlm.load("demo-ar"), "converted": fast_dvlm.load("demo")}
        for vlm in models.values():
            vlm.model.to(device)
        answers[device] = {m.label: [] for m in BENCH_MODES}
        for item in items:
            for m in BENCH_MODES:
                got = answer(
                    models[m.model], m.mode, m.settings, item.question, [item.image], sizes.bench_tokens
                )
                answers[device][m.label].append((got.token_ids, got.text, got.nfe))
    cpu, dev = answers["cpu"], answers[sizes.device]
    stored = json.loads(BENCH_DEMO.read_text())["modes"]
    modes = {}
    for m in BENCH_MODES:
        right = [
            get_task(i.task).score(text, i.key) for i, (_, text, _) in zip(items, dev[m.label], strict=True)
        ]
        figures = {
            "accuracy": 100 * sum(right) / len(items),
            "stored_cpu_accuracy": stored.get(m.label, {}).get("accuracy"),  # None: newer than the file
            "tokens_per_nfe": sum(len(t) for t, _, _ in dev[m.label]) / sum(n for _, _, n in dev[m.label]),
        }
        if m.label in LOSSLESS:
            figures["equal_to_cpu"] = sum(
                a[0] == b[0] for a, b in zip(dev[m.label], cpu[m.label], strict=True)
            )
            reference = dev[LOSSLESS[m.label]]
            figures["equal_to_ar_on_device"] = sum(
                a[0] == b[0] for a, b in zip(dev[m.label], reference, strict=True)
            )
        modes[m.label] = figures
    lossless_ok = all(
        f["equal_to_cpu"] == f["equal_to_ar_on_device"] == len(items)
        for f in modes.values()
        if "equal_to_cpu" in f
    )
    return {
        "items": len(items),
        "modes": modes,
        "lossless_ok": lossless_ok,
        "syncs_per_pass": syncs(sizes, items),
    }


def syncs(sizes: Sizes, items: list) -> dict[str, float] | None:
    """Host syncs per forward pass of each decoding mode (torch's sync debug mode counts them)."""
    if not sizes.device.startswith("cuda"):
        return None
    vlm = fast_dvlm.load("demo")
    vlm.model.to(sizes.device)
    out = {}
    for mode in ("ar", "diffusion", "spec-linear", "spec-quadratic"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                got = vlm.generate(items[0].question, [items[0].image], mode, sizes.bench_tokens)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count = sum("synchroniz" in str(w.message) for w in caught)
        out[mode] = count / max(got.nfe, 1)
    return out


def part_curve(sizes: Sizes, out: Path) -> dict:
    """Pass cost over a `context`-token cache for each shape, and each mode's expected speed-up."""
    bench = json.loads(BENCH_DEMO.read_text())
    result = {}
    for name, shape in sizes.shapes.items():
        model = build_lm(shape, sizes.device, sizes.dtype)
        costs = passes.pass_costs(model, sizes.counts, sizes.context, sizes.repeats, sizes.device)
        del model
        speedups = {s.label: passes.expected_speedup(costs, s) for s in passes.schedules(bench)}
        result[name] = {"ms": costs, "expected_speedup": speedups}
    return result


def part_e2e(sizes: Sizes, out: Path) -> dict:
    """Timed decoding of the e2e shape per mode, acceptance forced to the demo's; vs the estimate."""
    bench = json.loads(BENCH_DEMO.read_text())
    model = build_lm(sizes.shapes[sizes.e2e_shape], sizes.device, sizes.dtype)
    costs = passes.pass_costs(model, sizes.counts, sizes.context, sizes.repeats, sizes.device)
    result = {}
    for schedule in passes.schedules(bench):
        passes.timed_decode(
            model, schedule, sizes.context, min(sizes.new_tokens, 32), sizes.device
        )  # warm-up
        run = passes.timed_decode(model, schedule, sizes.context, sizes.new_tokens, sizes.device)
        result[schedule.label] = run | {
            "tokens_per_s": run["tokens"] / run["seconds"],
            "expected_speedup": passes.expected_speedup(costs, schedule),
        }
    ar_rate = result["ar"]["tokens_per_s"]
    for figures in result.values():
        figures["measured_speedup"] = figures["tokens_per_s"] / ar_rate
    return result


def part_train(sizes: Sizes, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        return train_step.train_step_costs(
            sizes.vlm, sizes.device, Path(workdir), sizes.train_batch, sizes.answer_words, sizes.real_vocab
        )


def part_fp8(sizes: Sizes, out: Path) -> dict:
    model = build_lm(sizes.shapes[sizes.e2e_shape], sizes.device, sizes.dtype)
    ratios = fp8.pass_cost_ratios(model, sizes.fp8_counts, sizes.context, sizes.repeats, sizes.device)
    del model
    return {"pass_cost": ratios, "codes": fp8.codes_equal_emulation(fast_dvlm.load("demo"), sizes.device)}


PARTS: dict[str, Callable[[Sizes, Path], dict]] = {
    "tests": part_tests,
    "bench": part_bench,
    "curve": part_curve,
    "e2e": part_e2e,
    "train": part_train,
    "fp8": part_fp8,
}


def run_part(name: str, sizes: Sizes, out: Path) -> dict:
    """One part, timed; an exception becomes the part's recorded error."""
    start = time.perf_counter()
    try:
        entry = {"ok": True, "result": PARTS[name](sizes, out)}
    except Exception as exc:  # noqa: BLE001 (any failure of one part must leave the others running)
        entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return entry | {"seconds": time.perf_counter() - start}


# --- the report ------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    env, parts = results["environment"], results["parts"]
    lines = [f"# GPU check ({'dry run, ' if env['dry_run'] else ''}{env['device_name']}, {env['date']})", ""]
    lines += [
        f"torch {env['torch']}, {env['dtype']}; parts: "
        + ", ".join(f"{n} {'ok' if p['ok'] else 'FAILED'} ({p['seconds']:.0f} s)" for n, p in parts.items()),
        "",
    ]
    for name, part in parts.items():
        lines += [f"## {name}", ""]
        if not part["ok"]:
            lines += [f"Error: `{part['error']}`", ""]
            continue
        lines += RENDER[name](part["result"]) + [""]
    return "\n".join(lines)


def table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]


def render_tests(r: dict) -> list[str]:
    return [f"{r['tests']} tests, {r['failures']} failures, {r['errors']} errors, {r['skipped']} skipped"] + [
        f"- failed: `{name}`" for name in r["failed"]
    ]


def render_bench(r: dict) -> list[str]:
    rows = [
        [
            label,
            f["accuracy"],
            f["stored_cpu_accuracy"],
            f["tokens_per_nfe"],
            f"{f['equal_to_cpu']}/{r['items']}" if "equal_to_cpu" in f else "",
            f"{f['equal_to_ar_on_device']}/{r['items']}" if "equal_to_ar_on_device" in f else "",
        ]
        for label, f in r["modes"].items()
    ]
    lines = [f"{r['items']} items; lossless modes equal: {'yes' if r['lossless_ok'] else 'NO'}", ""]
    lines += table(
        [
            "mode",
            "accuracy %",
            "stored CPU accuracy % (full split)",
            "tokens/NFE",
            "answers = CPU's",
            "answers = ar's on device",
        ],
        rows,
    )
    if r["syncs_per_pass"]:
        lines += [
            "",
            "Host syncs per forward pass: "
            + ", ".join(f"{m} {v:.2f}" for m, v in r["syncs_per_pass"].items()),
        ]
    return lines


def render_curve(r: dict) -> list[str]:
    counts = list(next(iter(r.values()))["ms"])
    rows = [
        [name, v["ms"][counts[0]]] + [v["ms"][n] / v["ms"][counts[0]] for n in counts[1:]]
        for name, v in r.items()
    ]
    lines = table(["model", f"{counts[0]} token (ms)"] + [f"{n} (x)" for n in counts[1:]], rows)
    labels = list(next(iter(r.values()))["expected_speedup"])
    lines += ["", "Expected speed-up over AR (demo's acceptance):", ""]
    return lines + table(
        ["model"] + labels, [[name] + [v["expected_speedup"][k] for k in labels] for name, v in r.items()]
    )


def render_e2e(r: dict) -> list[str]:
    rows = [
        [label, f["tokens"], f["passes"], f["tokens_per_s"], f["measured_speedup"], f["expected_speedup"]]
        for label, f in r.items()
    ]
    return table(["mode", "tokens", "passes", "tokens/s", "measured speed-up", "expected"], rows)


def render_train(r: dict) -> list[str]:
    full = r["full"]
    rows = [
        [
            layout,
            f["peak_gb"],
            f["peak_gb"] / full["peak_gb"],
            f["step_s"],
            f["step_s"] / full["step_s"],
            f["loss"],
        ]
        for layout, f in r.items()
    ]
    return table(["noisy stream", "peak GB", "vs full", "step s", "vs full", "loss"], rows)


def render_fp8(r: dict) -> list[str]:
    lines = []
    for scheme in fp8.SCHEMES:
        cost, codes = r["pass_cost"][scheme], r["codes"][scheme]
        if "skipped" in cost:
            lines.append(f"- {scheme}: {cost['skipped']}")
            continue
        ratios = ", ".join(f"{n} tok {v:.2f}x" for n, v in cost["ratio_vs_bf16"].items())
        lines.append(
            f"- {scheme}: pass cost vs bf16 {ratios}; codes and scales equal to the emulation in "
            f"{codes['layers_equal']}/{codes['layers']} layers, "
            f"output rel. diff {codes['max_output_rel_diff']:.2g}"
        )
    return lines


RENDER = {
    "tests": render_tests,
    "bench": render_bench,
    "curve": render_curve,
    "e2e": render_e2e,
    "train": render_train,
    "fp8": render_fp8,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for results.json and results.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    sizes = dry_sizes() if args.dry_run else real_sizes()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    results = {
        "environment": {
            "date": datetime.date.today().isoformat(),
            "dry_run": args.dry_run,
            "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "torch": torch.__version__,
            "dtype": str(sizes.dtype).removeprefix("torch."),
            "sizes": {k: v for k, v in asdict(sizes).items() if k not in ("dtype", "vlm")},
        },
        "parts": {},
    }
    for name in args.parts.split(","):
        print(f"[gpu-check] {name} ...", flush=True)
        results["parts"][name] = entry = run_part(name, sizes, args.out)
        print(
            f"[gpu-check] {name}: {'ok' if entry['ok'] else entry['error']} ({entry['seconds']:.1f} s)",
            flush=True,
        )
        # written after every part, so a run stopped by its time limit keeps what it measured
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (args.out / "results.md").write_text(markdown(results))
    return 0 if all(p["ok"] for p in results["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
