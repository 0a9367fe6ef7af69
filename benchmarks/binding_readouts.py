"""Can the demo's vision tower hold several bindings at once, and does the language model then read
them? (issue 17)

    OMP_NUM_THREADS=2 python -m benchmarks.binding_readouts --out benchmarks/results/binding_readouts

Five tasks ask about one entity among several in the image: `spatial` (where is the red shape
relative to the blue one), `chart` (the red bar's value), `diagram` (the shape labelled B),
`presence` (is there a red circle) and `map` (the city in the red region). The shipped demo answers
them near chance, mostly with another entity's answer. `benchmarks/binding_study.py` showed, on
`spatial` alone, that a readout asking for the binding by content puts it into the tower in a few
hundred steps. Here readouts (`fast_dvlm.demo.readouts`, since a stage of the recipe) train the
tower and projector of the AR base (`demo-ar`; the language model is untouched) on the five tasks.
Arms:

- `together`: every step draws its scenes from all five tasks;
- `curriculum`: first each task of `--alone` alone for `--alone-steps` steps, in that order, then the
  five together for the remaining steps (the same total as `together`);
- `ar`: no readout stage (the control for the AR stage below).

Readout accuracy on the validation split (each record's first question) is logged at the end of each
phase and every `--eval-every` steps. `--heads K` gives each task K readouts (one alone learns the
binding or not depending on its seed); `--anchor W` keeps the six other tasks' visual tokens near the
base tower's, so the readouts do not take from the tower what the language model reads there;
`--score-readouts` scores each arm's tower under the base's language model, per task.

With `--ar-steps N`, each arm's model is then trained N AR
steps on the whole training split (every task, as the recipe's second cycle trains) and scored per
task with `ar` decoding on the validation split's first questions; `--ar-repeat spatial=5,...` gives
the named tasks' records that many times per epoch (the language model needs many binding questions
to learn to read a binding) and `--ar-freeze-tower` trains the language model only, keeping the
binding the readouts put into the tower. Each arm's results are kept in the work folder, so a rerun
after a crash goes on with the arms not yet done.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fast_dvlm.demo.readouts import (
    BINDING_TASKS,
    READOUT_TASKS,
    curriculum,
    format_repeat,
    parse_repeat,
    repeated_split,
    train_readouts,
)
from fast_dvlm.demo.recipe import DemoRecipe, ar_config
from fast_dvlm.demo.vision_pretrain import read_scenes
from fast_dvlm.errors import FastDVLMError
from fast_dvlm.eval.accuracy import mean_accuracy, read_items, score_answers
from fast_dvlm.train.trainer import convert
from fast_dvlm.vlm import load

TASKS = BINDING_TASKS
ARMS = ("together", "curriculum", "ar")


def score(model: str | Path, val_file: Path) -> dict[str, float]:
    """Per-task accuracy (each validation record's first question, `ar` decoding) and the means."""
    vlm = load(model)
    scores = score_answers(read_items(val_file), lambda i: vlm.generate(i.question, [i.image], "ar", 128))
    per_task = {task: s.summary()["accuracy"] for task, s in scores.items()}
    binding_mean = sum(per_task[t] for t in TASKS) / len(TASKS)
    return per_task | {"mean": mean_accuracy(scores), "binding": binding_mean}


def run_arm(arm: str, data: Path, work: Path, args: argparse.Namespace) -> dict:
    """The arm's readout stage (if any), then its AR stage (if `--ar-steps`); each stage's model and
    results are kept in `work`, so a rerun (or another `--ar-steps`) reuses what is done."""
    start, result = Path(args.base), {}
    if arm != "ar":
        alone = f"-{args.alone.replace(',', '+')}-alone-{args.alone_steps}" if arm == "curriculum" else ""
        heads = f"-{args.heads}-heads" if args.heads > 1 else ""
        anchor = f"-anchor-{args.anchor}" if args.anchor else ""
        tasks = f"-{'+'.join(args.tasks)}" if args.tasks != BINDING_TASKS else ""
        start = work / f"{arm}-{args.steps}-steps{alone}{heads}{anchor}{tasks}-seed-{args.seed}"
        if not (start / "readout.json").exists():
            alone = args.alone.split(",") if arm == "curriculum" else []
            schedule = curriculum(args.steps, alone, args.alone_steps, args.tasks)
            vlm = load(args.base)
            scenes, val = read_scenes(data / "train.json"), read_scenes(data / "val.json")
            report = train_readouts(
                vlm, scenes, val, schedule, args.batch_size, args.lr, args.seed, args.heads, args.anchor,
                args.eval_every, tasks=args.tasks,
            )  # fmt: skip
            vlm.save_pretrained(start)
            (start / "readout.json").write_text(
                json.dumps({"schedule": schedule, "readout": report["log"]}, indent=1)
            )
        result |= json.loads((start / "readout.json").read_text())
        if args.score_readouts:  # the base's language model reading the readouts' tower, no AR
            if not (start / "scores.json").exists():
                (start / "scores.json").write_text(json.dumps(score(start, data / "val.json")))
            result["scored"] = json.loads((start / "scores.json").read_text())
    if args.ar_steps:
        variant = "".join(f"-{t}{n}" for t, n in sorted(args.ar_repeat.items())) + (
            "-frozen-tower" if args.ar_freeze_tower else ""
        )
        out = work / f"{start.name}-ar-{args.ar_steps}-lr-{args.ar_lr}{variant}"
        if not (out / "scores.json").exists():
            started = time.perf_counter()
            config = ar_config(args.ar_steps, args.ar_lr, args.batch_size, args.seed)
            config.freeze_vision = args.ar_freeze_tower
            convert(start, repeated_split(data / "train.json", args.ar_repeat), out, config)
            minutes = (time.perf_counter() - started) / 60
            (out / "scores.json").write_text(
                json.dumps({"ar_minutes": minutes} | score(out, data / "val.json"))
            )
        after = json.loads((out / "scores.json").read_text())
        result |= {"ar_minutes": after.pop("ar_minutes"), "after": after}
    return result


def ar_variant(settings: dict) -> str:
    """The AR stage's options as they are given on the command line."""
    repeat = format_repeat(settings["ar_repeat"])
    frozen = " --ar-freeze-tower" if settings["ar_freeze_tower"] else ""
    return (f" --ar-repeat {repeat}" if repeat else "") + frozen


def markdown(results: dict, base: dict | None, settings: dict) -> str:
    """The readout table (accuracy per task at each logged step) and, after AR, the per-task table."""
    readout_tasks = settings.get("tasks", TASKS)
    command = (
        f"`python -m benchmarks.binding_readouts --arms {','.join(results)} --steps {settings['steps']} "
        f"--alone {settings['alone']} --alone-steps {settings['alone_steps']} "
        f"--heads {settings.get('heads', 1)} --eval-every {settings.get('eval_every', 400)} "
        + (f"--anchor {settings['anchor']} " if settings.get("anchor") else "")
        + (f"--tasks {','.join(readout_tasks)} " if tuple(readout_tasks) != TASKS else "")
        + ("--score-readouts " if settings.get("score_readouts") else "")
        + f"--ar-steps {settings['ar_steps']}{ar_variant(settings)}`"
    )
    lines = [
        "# Can the tower hold several bindings at once?",
        "",
        f"{command} (base `{settings['base']}`, batch {settings['batch_size']}, "
        f"readout lr {settings['lr']}). "
        "Readout accuracy (the mean logits of a task's readouts): each validation record's first "
        "question, 60 a task (the number tasks: every number of each record, by place).",
        "",
        "| arm | step | phase | " + " | ".join(readout_tasks) + " | minutes |",
        "|---|---|---|" + "---|" * (len(readout_tasks) + 1),
    ]
    for arm, r in results.items():
        for row in r.get("readout", []):
            cells = " | ".join(f"{row['val'][t]:.1f}" for t in readout_tasks)
            lines.append(
                f"| `{arm}` | {row['step']} | {row['phase']} | {cells} | {row['seconds'] / 60:.1f} |"
            )
    if base is not None:
        tasks = [t for t in base if t not in ("mean", "binding")]
        lines += [
            "",
            "Per task, `ar` decoding, each validation record's first question: the base, each arm's readout "
            "tower under the base's language model (`readouts only`, with `--score-readouts`) and after "
            f"{settings['ar_steps']} AR steps (lr {settings['ar_lr']}) on the whole training split"
            + (f", tasks repeated {settings['ar_repeat']}" if settings["ar_repeat"] else "")
            + (", tower and projector frozen" if settings["ar_freeze_tower"] else "")
            + ".",
            "",
            "| model | " + " | ".join(tasks) + " | binding five | mean |",
            "|---|" + "---|" * (len(tasks) + 2),
        ]
        rows = [(f"`{settings['base']}` (before)", base)]
        rows += [(f"`{arm}` readouts only", r["scored"]) for arm, r in results.items() if "scored" in r]
        rows += [(f"`{arm}` + AR", r["after"]) for arm, r in results.items() if "after" in r]
        for name, s in rows:
            cells = " | ".join(f"{s[t]:.0f}" for t in tasks)
            lines.append(f"| {name} | {cells} | {s['binding']:.1f} | **{s['mean']:.1f}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base", default="demo-ar", help="the AR base whose tower is trained (default: demo-ar)"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=1200, help="readout steps per arm (default: 1200)")
    parser.add_argument(
        "--alone", default="spatial,chart", help="the curriculum's tasks taken alone, in order"
    )
    parser.add_argument(
        "--alone-steps", type=int, default=300, help="steps for each task alone (default: 300)"
    )
    parser.add_argument(
        "--ar-steps", type=int, default=0, help="AR steps after the readouts (default: 0, none)"
    )
    parser.add_argument("--ar-lr", type=float, default=5e-4)
    parser.add_argument(
        "--ar-repeat",
        default="",
        help="oversample tasks in the AR stage, e.g. spatial=5,chart=4 (records per epoch; others once)",
    )
    parser.add_argument(
        "--ar-freeze-tower",
        action="store_true",
        help="the AR stage trains the language model only (tower and projector as the readouts left them)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="tower, projector and readout lr")
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument(
        "--anchor",
        type=float,
        default=0.0,
        help="weight of keeping the other tasks' visual tokens where the base's tower put them (default: 0)",
    )
    parser.add_argument(
        "--score-readouts",
        action="store_true",
        help="also score each arm's readout-trained model (the base's language model, no AR) per task",
    )
    parser.add_argument(
        "--heads",
        type=int,
        default=1,
        help="readouts per task, each from its own initialisation (scored as their mean logits)",
    )
    parser.add_argument(
        "--tasks",
        default=",".join(BINDING_TASKS),
        help=f"the readouts' tasks, of {', '.join(READOUT_TASKS)} (default: the five binding tasks; the "
        "number tasks are read number by number)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/binding_readouts", help="data, checkpoints, finished arms")
    parser.add_argument("--out", default=None, help="also write OUT.md (the tables) and OUT.json")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := sorted(set(arms) - set(ARMS)):
        parser.error(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    try:
        args.ar_repeat = parse_repeat(args.ar_repeat)
    except FastDVLMError as error:
        parser.error(str(error))
    if args.anchor < 0:
        parser.error(f"--anchor must be 0 or more, got {args.anchor}")
    if args.heads < 1:
        parser.error(f"--heads must be at least 1, got {args.heads}")
    args.tasks = tuple(filter(None, args.tasks.split(",")))
    if "ar" in arms and not args.ar_steps:
        parser.error("the `ar` arm is the AR stage's control: give --ar-steps")
    for arm in set(arms) - {"ar"}:
        try:
            alone = args.alone.split(",") if arm == "curriculum" else []
            curriculum(args.steps, alone, args.alone_steps, args.tasks)
        except FastDVLMError as error:
            parser.error(str(error))
    work = Path(args.workdir)
    data = work / "data"
    if not all((data / f"{split}.json").exists() for split in ("train", "val")):  # built once, deterministic
        DemoRecipe().build_data(data, splits=("train", "val"))
    checkpoints = work / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    results = {arm: run_arm(arm, data, checkpoints, args) for arm in arms}
    base = None
    if args.ar_steps or args.score_readouts:
        cached = checkpoints / f"{Path(args.base).name}-scores.json"
        if not cached.exists():
            cached.write_text(json.dumps(score(args.base, data / "val.json")))
        base = json.loads(cached.read_text())
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}
    text = markdown(results, base, settings)
    print(text)
    if args.out:
        Path(f"{args.out}.md").write_text(text)
        payload = {"settings": settings, "base": base, "results": results}
        Path(f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
