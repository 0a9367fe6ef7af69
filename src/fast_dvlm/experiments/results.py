"""docs/RESULTS.md: every table beside the paper's number, the plots, the budgets, and a plain
statement, computed from the numbers, of where we agree with the paper and where we do not."""

from __future__ import annotations

from pathlib import Path

from ..data import TASKS, get_task
from . import paper
from .agreement import (
    AGREES,
    DISAGREES,
    NOISE,
    Noise,
    accuracy,
    accuracy_noise,
    sampling_error,
    saving,
    verdict,
)
from .evaluate import HEADLINE
from .plots import plot_sweep, plot_variants
from .sweep import DEFAULT, default_point
from .variants import (
    AR_WEIGHT,
    BLOCK_CAUSAL,
    DIRECT,
    NO_ANNEALING,
    NO_AUTO_TRUNCATION,
    REPEAT,
    TWO_STAGE,
    VISION_BOTH,
)

Row = tuple[str, str, str, str]  # claim, paper, ours, verdict


def write_results(report: dict, path: Path) -> Path:
    """Write the page and its two figures (beside it, named after it); return the page's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {name: path.with_name(f"{path.stem.lower()}_{name}.png") for name in ("variants", "sweep")}
    noise = accuracy_noise(bench(report, DIRECT), bench(report, REPEAT))
    short = {name: accuracy(bench(report, name)) for name in report["variants"]}
    plot_variants(short, accuracy(report["base_result"]["bench"]["ar"]), noise.size, figures["variants"])
    best, sweep_error = sweep_noise(report["sweep"]["points"])
    plot_sweep(report["sweep"]["points"], DEFAULT, best["accuracy"] - sweep_error, figures["sweep"])
    sections = (
        setup(report),
        headline(report, noise),
        variants_table(report, figures["variants"].name),
        per_task(report),
        layout(report),
        multi_turn(report),
        speculation(report),
        sweep(report, figures["sweep"].name),
    )
    path.write_text("\n\n".join(sections) + "\n")
    return path


def bench(report: dict, variant: str, mode: str = HEADLINE) -> dict:
    return report["variants"][variant]["bench"][mode]


def one(x: float) -> str:
    return f"{x:.1f}"


def two(x: float) -> str:
    return f"{x:.2f}"


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def setup(report: dict) -> str:
    s, data, machine = report["settings"], report["data"], report["machine"]
    train, repeat_seed = s["train"], report["variants"][REPEAT]["seed"]
    variants = report["variants"].values()
    training_min = sum(v["training"]["seconds"] for v in variants) / 60
    scoring = [v["eval_s"] for v in variants] + [report["base_result"]["seconds"], report["sweep"]["seconds"]]
    scoring_min = sum(scoring) / 60
    hardware = machine["gpu"] or f"{machine['cpus']} CPU cores, {machine['torch_threads']} torch threads"
    return f"""# Fast-dVLM's comparisons, reproduced at small scale

Written by `fast-dvlm experiments` (`fast_dvlm.experiments`) from the work directory's JSON files;
rerunning the command regenerates it. Every number below comes from the results kept in that work
directory, made with the settings listed here (a rerun with other scoring settings scores again).

## Setup

- AR base: `{report["base"]}`; every variant is converted from it with the same budget: {train["steps"]}
  steps of global batch {train["batch_size"]}, lr {train["lr"]} (warm-up {train["warmup_steps"]}, then
  {train["lr_schedule"]}), weight decay {train["weight_decay"]}, seed {train["seed"]} (data order and noise;
  the repeat of `direct` uses seed {repeat_seed}).
- Data: the procedural tasks of `fast_dvlm.data` in `{data["folder"]}`: {data["train_records"]} training
  conversations ({data["train_multi_turn"]} of them multi-turn); the test split has {data["test_records"]}
  records, of which each variant answers {s["per_task"]} per task; the multi-turn test set has
  {data["multi_turn_conversations"]} conversations (seeds no split uses); the inference sweep answers
  {s["sweep_per_task"]} items per task; answers are cut at {s["max_new_tokens"]} tokens.
- Machine: {hardware}. Training took {training_min:.0f} min, scoring {scoring_min:.0f} min.
- Each variant trains in its own process (`experiments/training.py`): its peak memory is the
  process's peak resident set (RSS) on CPU (on a GPU, peak allocated GPU memory). The growth above
  the process start leaves out the libraries, which every variant loads alike.
- The paper's numbers are for Qwen2.5-VL-3B on 11 real benchmarks; ours for a tiny model on 11
  procedural stand-ins. What can agree is the direction and rough size of each effect."""


def headline(report: dict, noise: Noise) -> str:
    rows = claims(report, noise)
    tested = {word: [r[0] for r in rows if r[3] == word] for word in (AGREES, NOISE, DISAGREES)}
    plain = "\n".join(f"- {word}: {'; '.join(names) or 'none'}" for word, names in tested.items())
    return f"""## Headline: the paper's claims against ours

Accuracy is the short-answer average over tasks with masked diffusion at tau 0.9 (the paper's
10-benchmark average), in points. **Run-to-run noise:** the repeat of `direct` with another seed
moved it by {noise.seed_difference:.1f} points, and with {report["settings"]["per_task"]} items per task
two standard errors of a difference are {noise.sampling:.1f} points; an effect counts when it exceeds
{noise.size:.1f} points.

{table(("claim", "paper", "ours", "verdict"), rows)}

**In plain words:** of {sum(map(len, tested.values()))} claims tested, {len(tested[AGREES])} agree with
the paper beyond the noise, {len(tested[NOISE])} are within the noise (not resolved at this scale) and
{len(tested[DISAGREES])} go the other way beyond it.

{plain}"""


def claims(report: dict, noise: Noise) -> list[Row]:
    direct = accuracy(bench(report, DIRECT))
    base = accuracy(report["base_result"]["bench"]["ar"])
    kept = direct - base
    rows: list[Row] = [(
        "direct conversion keeps the AR base's accuracy",
        f"{paper.DIRECT_AVERAGE} vs AR {paper.AR_AVERAGE}",
        f"{direct:.1f} vs AR {base:.1f} ({kept:+.1f})",
        AGREES if kept >= -noise.size else DISAGREES,
    )]  # fmt: skip
    for name in (TWO_STAGE, BLOCK_CAUSAL, NO_ANNEALING, NO_AUTO_TRUNCATION):
        effect = accuracy(bench(report, name)) - direct
        relative = f" ({100 * effect / direct:+.1f}%)" if direct else ""
        cost = f"-{paper.ABLATION_COST[name]:.1f}"
        rows.append(
            (paper.PAPER_CLAIM[name], cost, f"{effect:+.1f} points{relative}", verdict(effect, -1, noise))
        )
    rows.append(multi_turn_claim(report))
    rows += layout_claims(report)
    rows.append(speculation_claim(report))
    effect = accuracy(bench(report, AR_WEIGHT)) - direct
    better = NOISE if abs(effect) <= noise.size else ("0.5/1.0 better" if effect > 0 else "0.5/0.5 better")
    ours = f"0.5/1.0: {effect:+.1f} points"
    rows.append((paper.PAPER_CLAIM[AR_WEIGHT], "alpha = beta = 0.5", ours, f"no claim to test ({better})"))
    return rows


def multi_turn_claim(report: dict) -> Row:
    """Auto-truncation on what it is for: the follow-up answers of multi-turn conversations."""
    follow_up = {
        n: report["variants"][n]["multi_turn"]["follow_up"] for n in (DIRECT, REPEAT, NO_AUTO_TRUNCATION)
    }
    direct, repeat = follow_up[DIRECT], follow_up[REPEAT]
    sampling = sampling_error([direct["tasks"], repeat["tasks"]], list(direct["tasks"]))
    noise = Noise(abs(direct["accuracy"] - repeat["accuracy"]), sampling)
    effect = follow_up[NO_AUTO_TRUNCATION]["accuracy"] - direct["accuracy"]
    ours = f"{effect:+.1f} points (noise {noise.size:.1f})"
    claim = "removing auto-truncation, on multi-turn follow-up answers"
    return (claim, "(not reported)", ours, verdict(effect, -1, noise))


def memory(training: dict) -> float:
    """Peak GPU memory where there is a GPU, else the peak RSS above the process start (MB)."""
    return training.get("peak_gpu_mb", training["peak_rss_mb"] - training["start_rss_mb"])


def layout_claims(report: dict) -> list[Row]:
    runs = {name: report["variants"][name]["training"] for name in (DIRECT, REPEAT, VISION_BOTH)}
    rows = []
    measures = (
        ("peak memory", memory, paper.MEMORY_SAVING),
        ("training step time", lambda t: t["median_step_s"], paper.TIME_SAVING),
    )
    for what, measure, claimed in measures:
        costly = measure(runs[VISION_BOTH])
        saved = saving(measure(runs[DIRECT]), costly)
        spread = Noise(100 * abs(measure(runs[DIRECT]) - measure(runs[REPEAT])) / costly, 0.0, "%")
        ours = f"{saved:.1f}% (`response` against `full`; noise {spread.size:.1f}%)"
        rows.append(
            (f"vision-efficient concatenation saves {what}", f"{claimed}%", ours, verdict(saved, +1, spread))
        )
    return rows


def speculation_claim(report: dict) -> Row:
    direct = report["variants"][DIRECT]["bench"]
    diffusion, spec, ar = (direct[m]["long"]["accuracy"] for m in (HEADLINE, "spec-linear", "ar"))
    noise = accuracy_noise(bench(report, DIRECT), bench(report, REPEAT), "long")
    paper_long = paper.LONG_ANSWER
    return (
        "self-speculation recovers long-answer accuracy",
        f"diffusion {paper_long[HEADLINE]}, spec {paper_long['spec-linear']}, AR {paper_long['ar']}",
        f"diffusion {diffusion:.1f}, spec {spec:.1f}, AR {ar:.1f} (noise {noise.size:.1f})",
        verdict(spec - diffusion, +1, noise),
    )


def variants_table(report: dict, figure: str) -> str:
    direct = accuracy(bench(report, DIRECT))
    base = report["base_result"]["bench"]["ar"]
    short = one(accuracy(base))
    rows = [("AR base", "ar decoding of the base", short, "", f"AR {paper.AR_AVERAGE}",
             one(base["long"]["accuracy"]), short, "", "1.00", "", "", "")]  # fmt: skip
    for name, result in report["variants"].items():
        b, t = result["bench"], result["training"]
        claim = f"-{paper.ABLATION_COST[name]:.1f}" if name in paper.ABLATION_COST else ""
        diffusion, spec = b[HEADLINE], b["spec-linear"]
        rows.append((
            f"`{name}`", result["change"], one(accuracy(diffusion)), f"{accuracy(diffusion) - direct:+.1f}",
            str(paper.DIRECT_AVERAGE) if name == DIRECT else claim, one(diffusion["long"]["accuracy"]),
            one(accuracy(b["ar"])), one(accuracy(spec)), two(diffusion["all"]["tokens_per_nfe"]),
            two(spec["all"]["tokens_per_nfe"]), f"{t['peak_rss_mb']:.0f}", two(t["median_step_s"]),
        ))  # fmt: skip
    header = ("variant", "what changes", "short acc. (tau 0.9)", "vs direct", "paper", "long acc. (tau 0.9)",
              "short acc. ar", "short acc. spec-linear", "tokens/NFE tau 0.9", "tokens/NFE spec-linear",
              "peak RSS (MB)", "median step (s)")  # fmt: skip
    return f"""## Every variant on the test split

Short/long: the 10 short-answer tasks / the long-answer task (the MMMU-Pro-V stand-in). Tokens/NFE
over all tasks. "paper" is the paper's average for `direct` and its reported cost for the ablations.

{table(header, rows)}

![short-answer accuracy of each variant]({figure})"""


def per_task(report: dict) -> str:
    names = list(report["variants"])
    base = report["base_result"]["bench"]["ar"]["tasks"]
    rows = []
    for task in TASKS:
        if task not in base:
            continue
        cells = [bench(report, n)["tasks"][task] for n in names]
        rate = [f"{100 * c['correct'] / max(c['total'], 1):.0f}" for c in [base[task], *cells]]
        rows.append((f"{task} ({get_task(task).benchmark})", *rate))
    return f"""## Per task (accuracy %, tau 0.9; the base with ar decoding)

{table(("task", "AR base", *names), rows)}"""


def layout(report: dict) -> str:
    rows = []
    for name in (DIRECT, REPEAT, VISION_BOTH):
        t = report["variants"][name]["training"]
        layout_name = report["variants"][name]["recipe"].get("noisy_layout", "response")
        gpu = f"{t['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in t else "-"
        megabytes = (f"{t['peak_rss_mb']:.0f}", f"{t['peak_rss_mb'] - t['start_rss_mb']:.0f}", gpu)
        rows.append((f"`{name}`", layout_name, *megabytes, f"{t['median_step_s']:.3f}"))
    header = ("run", "noisy stream", "peak RSS (MB)", "above process start (MB)", "peak GPU (MB)",
              "median step (s)")  # fmt: skip
    return f"""## Layout: vision-efficient concatenation

The paper's efficient layout keeps the text positions in the noisy stream (`text`); ours, the
package default, keeps only the answer positions (`response`), which gives the same loss for less.
`vision-both-streams` puts the whole sequence, vision included, in both streams (`full`). So the
saving measured here is `response` against `full`: it counts the prompt's text positions as well as
its few visual tokens (4-9 per image on the demo models), more than the paper's `text` layout alone
would save; compare its direction with the paper's, not its size. The two `direct` runs show how
much the measurement itself varies.

{table(header, rows)}"""


def multi_turn(report: dict) -> str:
    rows = []
    for name in (DIRECT, REPEAT, NO_AUTO_TRUNCATION):
        m = report["variants"][name]["multi_turn"]
        answers = sum(c["total"] for c in m["all"]["tasks"].values())
        rows.append((f"`{name}`", f"{m['all']['accuracy']:.1f}", f"{m['first']['accuracy']:.1f}",
                     f"{m['follow_up']['accuracy']:.1f}", m["conversations"], answers))  # fmt: skip
    header = ("variant", "all answers", "first answers", "follow-up answers", "conversations", "answers")
    return f"""## Multi-turn conversations (auto-truncation)

2-3 questions about one image in one conversation, each answer decoded (tau 0.9) after the model's
own earlier answers and scored; accuracy averaged over the tasks that have several questions.

{table(header, rows)}"""


def speculation(report: dict) -> str:
    b = report["variants"][DIRECT]["bench"]
    rows = []
    paper_nfe = {
        HEADLINE: paper.DIFFUSION_TOKENS_PER_NFE,
        "spec-linear": paper.SPEC_TOKENS_PER_NFE,
        "ar": 1.0,
    }
    for mode, nfe in paper_nfe.items():
        ours = b[mode]
        rows.append((mode, paper.LONG_ANSWER[mode], one(ours["long"]["accuracy"]), two(nfe),
                     two(ours["all"]["tokens_per_nfe"]), two(ours["long"]["tokens_per_nfe"])))  # fmt: skip
    header = ("mode", "paper long acc. (MMMU-Pro-V)", "ours long acc.", "paper tokens/NFE", "ours tokens/NFE",
              "ours tokens/NFE, long")  # fmt: skip
    return f"""## Self-speculation on long answers (the `direct` model)

`spec-linear` is lossless (its answer is the model's own greedy AR answer), so its accuracy equals
`ar`'s; what it buys is tokens per forward pass.

{table(header, rows)}"""


def sweep(report: dict, figure: str) -> str:
    points = report["sweep"]["points"]
    rows = [(p["threshold"], p["block_size"], f"{p['accuracy']:.1f}", f"{p['tokens_per_nfe']:.2f}",
             f"{p['tokens_per_s']:.0f}", "yes" if p["frontier"] else "") for p in points]  # fmt: skip
    header = ("tau", "block size", "accuracy (all tasks)", "tokens/NFE", "tokens/s", "on the frontier")
    return f"""## Inference sweep: tau and block size (the `direct` model, masked diffusion)

{default_statement(points)}

At tau 1.0 no confidence clears the threshold, so each pass unmasks only the most confident masked
position of its sub-block, which may lie past the answer's stop token: fewer than one kept token per
pass.

![accuracy against tokens per second]({figure})

{table(header, rows)}"""


def sweep_noise(points: list[dict]) -> tuple[dict, float]:
    """The sweep's most accurate point and two standard errors (points) of an accuracy difference
    between it and the defaults (itself where the defaults were not swept) on these items."""
    best = max(points, key=lambda p: (p["accuracy"], p["tokens_per_s"]))
    default = default_point(points) or best
    return best, sampling_error([best["tasks"], default["tasks"]], list(best["tasks"]))


def default_statement(points: list[dict]) -> str:
    """What the sweep says about the defaults: whether they are on the frontier, whether the grid's
    accuracies differ by more than the sampling noise, and the fastest setting within the noise of
    the most accurate one."""
    point = default_point(points)
    settings = f"tau {DEFAULT['threshold']}, block {DEFAULT['block_size']}"
    if point is None:
        return f"The default settings ({settings}) were not in this sweep."
    best, noise = sweep_noise(points)
    near_best = [p for p in points if p["accuracy"] >= best["accuracy"] - noise]
    fastest = max(near_best, key=lambda p: p["tokens_per_s"])
    low, high = min(p["accuracy"] for p in points), best["accuracy"]

    def name(p: dict) -> str:
        return f"tau {p['threshold']}, block {p['block_size']}"

    lines = [
        f"The defaults ({settings}): {point['accuracy']:.1f}%, {point['tokens_per_s']:.0f} tokens/s, "
        f"{'on' if point['frontier'] else 'not on'} the frontier. Accuracy over the grid spans "
        f"{low:.1f}-{high:.1f}%; two standard errors of a difference on these items are {noise:.1f} points."
    ]
    if point["accuracy"] < best["accuracy"] - noise:
        lines.append(f"{name(best)} is more accurate than the defaults beyond the noise ({high:.1f}%).")
    else:
        lines.append("The defaults are as accurate as the best setting within the noise.")
    if fastest is point:
        lines.append("None within the noise of the most accurate was faster: the sweep supports them.")
        return " ".join(lines)
    lines.append(
        f"The fastest setting within the noise of the most accurate is {name(fastest)}: "
        f"{fastest['accuracy']:.1f}%, {fastest['tokens_per_s']:.0f} tokens/s, "
        f"{fastest['tokens_per_s'] / point['tokens_per_s']:.2f}x the defaults' speed."
    )
    lines.append(
        "The library keeps the paper's defaults: they were chosen for accuracy on real benchmarks, which "
        "a model this small cannot resolve, and a setting picked on this test split would be tuned on "
        f"it. For this model, `--threshold {fastest['threshold']} --block-size {fastest['block_size']}` "
        "is the setting to check on a validation split."
    )
    return " ".join(lines)
