"""`fast-dvlm bench`: accuracy and speed of every decoding mode on the procedural test split, in one run.

The AR base is decoded with transformers' `generate` (the reference speed) and with our `ar`; the
converted model with `ar`, `diffusion` at three thresholds and both self-speculative modes, each on
the lean path with the drafting policy; the `-before` rows run `ar` and the speculative modes as
they ran before issue 18 (transformers' forward, the whole block verified), for a before/after
comparison within one run. Items are interleaved across modes, so machine noise hits every mode
alike; each mode answers the first item once, untimed, before the run. `fast-dvlm bench` measures the
pass-cost model afresh before the run (a bench runs alone), so the policy and the ceiling read the
machine as it is now, and later runs read that curve from disk.

The ceiling of a mode is the tokens/s it would reach, at its tokens per pass, if every pass cost
what a 1-token pass costs (the pass-cost model's 1-token time): `tokens_per_nfe / cost(1)`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..data import TASKS, get_task
from ..modes import HF_GENERATE
from ..prompt import ImageLike, Messages
from ..vlm import DiffusionVLM, GenerationOutput
from .accuracy import Item, TaskScore, answer_groups, mean_accuracy, read_items

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class BenchMode:
    label: str
    model: str  # "base" (the AR model) or "converted"
    mode: str  # a decoding mode, or HF_GENERATE
    settings: dict = field(default_factory=dict)


BENCH_MODES = (
    BenchMode(HF_GENERATE, "base", HF_GENERATE),
    BenchMode("base-ar", "base", "ar"),
    BenchMode("ar-before", "converted", "ar", {"engine": "transformers"}),
    BenchMode("ar", "converted", "ar"),
    BenchMode("diffusion-t0.9", "converted", "diffusion", {"threshold": 0.9}),
    BenchMode("diffusion-t0.7", "converted", "diffusion", {"threshold": 0.7}),
    BenchMode("diffusion-t0.5", "converted", "diffusion", {"threshold": 0.5}),
    BenchMode(
        "spec-linear-before", "converted", "spec-linear", {"engine": "transformers", "draft_policy": "fixed"}
    ),
    BenchMode("spec-linear", "converted", "spec-linear"),
    BenchMode(
        "spec-quadratic-before",
        "converted",
        "spec-quadratic",
        {"block_size": 8, "engine": "transformers", "draft_policy": "fixed"},
    ),
    BenchMode("spec-quadratic", "converted", "spec-quadratic", {"block_size": 8}),
)


def answer(
    vlm: DiffusionVLM,
    mode: str,
    settings: dict,
    prompt: str | Messages,
    images: Sequence[ImageLike],
    max_new_tokens: int,
) -> GenerationOutput:
    """An answer decoded in `mode` with `settings`; for HF_GENERATE, by transformers' own `generate`."""
    if mode == HF_GENERATE:
        return vlm.hf_generate(prompt, images, max_new_tokens)
    return vlm.generate(prompt, images, mode, max_new_tokens, **settings)


def answer_batch(
    vlm: DiffusionVLM,
    mode: str,
    settings: dict,
    items: Sequence[Item],
    max_new_tokens: int,
) -> list[GenerationOutput]:
    """Answers to `items` decoded together (`generate_batch`; HF_GENERATE one by one). Answers decoded
    together overlap in time, so each is given an equal share of the batch's wall clock: summed, the
    seconds are the wall clock and tokens/s is the batch's throughput."""
    start = time.perf_counter()
    if mode == HF_GENERATE:
        outs = [vlm.hf_generate(i.question, [i.image], max_new_tokens) for i in items]
    else:
        prompts, images = [i.question for i in items], [[i.image] for i in items]
        outs = vlm.generate_batch(prompts, images, mode, max_new_tokens, **settings)
    share = (time.perf_counter() - start) / max(len(items), 1)
    return [replace(out, seconds=share) for out in outs]


def run_bench(
    models: dict[str, DiffusionVLM],
    split_file: str | Path,
    per_task: int | None = None,
    modes: tuple[BenchMode, ...] = BENCH_MODES,
    max_new_tokens: int = 128,
    progress: bool = True,
    batch_size: int = 1,
) -> dict[str, dict[str, TaskScore]]:
    """`{mode label: {task: TaskScore}}` over the split's first `per_task` items of each task.

    `batch_size` > 1 decodes `batch_size` items at a time with `generate_batch` (modes interleaved
    per batch); each answer's seconds are then its share of its batch's wall clock."""
    items = read_items(split_file, per_task)
    scores: dict[str, dict[str, TaskScore]] = {m.label: defaultdict(TaskScore) for m in modes}
    for spec in modes if items else ():  # warm-up, untimed
        answer(
            models[spec.model], spec.mode, spec.settings, items[0].question, [items[0].image], max_new_tokens
        )
    batches = [items[k : k + batch_size] for k in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc="bench", disable=not progress):
        for spec in modes:
            vlm = models[spec.model]
            if batch_size == 1:
                item = batch[0]
                outs = [answer(vlm, spec.mode, spec.settings, item.question, [item.image], max_new_tokens)]
            else:
                outs = answer_batch(vlm, spec.mode, spec.settings, batch, max_new_tokens)
            for item, out in zip(batch, outs, strict=True):
                scores[spec.label][item.task].add(out, get_task(item.task).score(out.text, item.key))
    return {label: dict(per_task_scores) for label, per_task_scores in scores.items()}


def combine(scores: dict[str, TaskScore], tasks: list[str]) -> TaskScore:
    total = TaskScore()
    for task in tasks:
        total.merge(scores[task])
    return total


def report(
    scores: dict[str, dict[str, TaskScore]], model_name: str, one_token_pass_s: float | None = None
) -> dict:
    """The JSON of `fast-dvlm bench --json`: per mode, per task, and the short/long-answer groups.

    Accuracy averages are over tasks (each task counts once); speeds pool all tokens and seconds.
    With `one_token_pass_s` (the converted model's 1-token pass), each mode and group also gets its
    ceiling (`ceiling_tokens_per_s`) and the share of it reached (`of_ceiling`).
    """
    tasks = [t for t in TASKS if t in next(iter(scores.values()))]
    reference = combine(scores[HF_GENERATE], tasks).summary()["tokens_per_s"]

    def figures(score: TaskScore, ref_rate: float, accuracy: float | None = None) -> dict:
        s = score.summary()
        out = {
            "accuracy": s["accuracy"] if accuracy is None else accuracy,
            "tokens_per_nfe": s["tokens_per_nfe"],
            "tokens_per_s": s["tokens_per_s"],
            "speedup_vs_hf_generate": s["tokens_per_s"] / ref_rate,
        }
        if one_token_pass_s:
            out["ceiling_tokens_per_s"] = s["tokens_per_nfe"] / one_token_pass_s
            out["of_ceiling"] = s["tokens_per_s"] / out["ceiling_tokens_per_s"]
        return out

    def task_mean(label: str, group: list[str]) -> float:
        return mean_accuracy({t: scores[label][t] for t in group})

    out: dict = {"model": model_name, "modes": {}, "groups": {}, "tasks": {}}
    if one_token_pass_s:
        out["one_token_pass_ms"] = 1000 * one_token_pass_s
    for label, per_task in scores.items():
        out["modes"][label] = figures(combine(per_task, tasks), reference, task_mean(label, tasks))
        for group_name, group in answer_groups(tasks).items():
            if group:
                group_ref = combine(scores[HF_GENERATE], group).summary()["tokens_per_s"]
                out["groups"].setdefault(group_name, {})[label] = figures(
                    combine(per_task, group), group_ref, task_mean(label, group)
                )
        for task in tasks:
            task_ref = scores[HF_GENERATE][task].summary()["tokens_per_s"]
            out["tasks"].setdefault(task, {})[label] = figures(per_task[task], task_ref)
    out["hf_generate"] = out["modes"][HF_GENERATE]
    out["accepted_per_step"] = {
        label: combine(per_task, tasks).accepted for label, per_task in scores.items()
    }
    return out


def markdown(result: dict) -> str:
    lines = [f"### `fast-dvlm bench` on {result['model']}", ""]
    header = ("mode", "accuracy (avg of tasks)", "short-answer acc.", "long-answer acc.", "tokens/NFE short",
              "tokens/NFE long", "tokens/s", "vs hf generate", "vs hf generate, long", "ceiling tokens/s",
              "of ceiling")  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, m in result["modes"].items():
        short, long = (
            result["groups"].get("short", {}).get(label, {}),
            result["groups"].get("long", {}).get(label, {}),
        )
        lines.append(
            f"| {label} | {m['accuracy']:.1f} | {short.get('accuracy', float('nan')):.1f} | "
            f"{long.get('accuracy', float('nan')):.1f} | {short.get('tokens_per_nfe', float('nan')):.2f} | "
            f"{long.get('tokens_per_nfe', float('nan')):.2f} | {m['tokens_per_s']:.0f} | "
            f"{m['speedup_vs_hf_generate']:.2f}x | {long.get('speedup_vs_hf_generate', float('nan')):.2f}x | "
            f"{m.get('ceiling_tokens_per_s', float('nan')):.0f} | "
            f"{100 * m.get('of_ceiling', float('nan')):.0f}% |"
        )
    if "one_token_pass_ms" in result:
        lines += [
            "",
            f"Ceiling: tokens/NFE over a {result['one_token_pass_ms']:.2f} ms 1-token pass (pass-cost model)",
        ]
    lines += ["", "Per task (accuracy % / tokens per NFE / speed-up vs hf generate):", ""]
    labels = list(result["modes"])
    lines += ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for task, per_mode in result["tasks"].items():
        cells = [
            f"{per_mode[m]['accuracy']:.0f} / {per_mode[m]['tokens_per_nfe']:.2f} / "
            f"{per_mode[m]['speedup_vs_hf_generate']:.1f}x"
            for m in labels
        ]
        lines.append(f"| {task} ({get_task(task).benchmark}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Figure:
    """Left: accuracy against speed-up over hf generate, one marker per mode (a legend, not labels
    that collide). Right: tokens per forward pass (tokens/NFE) for short and long answers, the one
    unit every mode shares (a diffusion block and a draft-verify step are not comparable steps).
    Writes the figure to `path` and returns it (closed: for reading its series, not for showing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["modes"])
    markers = "os^vD<>pPX*h"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for k, label in enumerate(labels):
        m = result["modes"][label]
        left.scatter(m["speedup_vs_hf_generate"], m["accuracy"], s=60, marker=markers[k % len(markers)],
                     label=f"{label}: {m['accuracy']:.1f}%, {m['speedup_vs_hf_generate']:.2f}x")  # fmt: skip
    left.set(xlabel="speed-up over transformers generate (tokens/s ratio)",
             ylabel="accuracy, mean over tasks (%)", title="Accuracy vs speed")  # fmt: skip
    left.legend(fontsize=7, loc="best")
    width = 0.4
    for offset, group in ((-width / 2, "short"), (width / 2, "long")):
        values = [
            result["groups"].get(group, {}).get(label, {}).get("tokens_per_nfe", 0.0) for label in labels
        ]
        bars = right.bar([k + offset for k in range(len(labels))], values, width, label=f"{group} answers")
        right.bar_label(bars, fmt="%.2f", fontsize=7)
    right.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    right.set(ylabel="tokens per forward pass (tokens/NFE)", title="Tokens per forward pass")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
