"""Can the demo's vision tower hold several bindings at once, and does the language model then read
them? (issue 17)

    OMP_NUM_THREADS=2 python -m benchmarks.binding_readouts --out benchmarks/results/binding_readouts

Five tasks ask about one entity among several in the image: `spatial` (where is the red shape
relative to the blue one), `chart` (the red bar's value), `diagram` (the shape labelled B),
`presence` (is there a red circle) and `map` (the city in the red region). The shipped demo answers
them near chance, mostly with another entity's answer. `benchmarks/binding_study.py` showed, on
`spatial` alone, that a readout asking for the binding by content puts it into the tower in a few
hundred steps. Here one readout per task (`EntityReadout`) trains the tower and projector of the AR
base (`demo-ar`; the language model is untouched) on the five tasks. Arms:

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
import copy
import json
import random
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm
from transformers import get_scheduler

from fast_dvlm.data import TASKS as DEMO_TASKS
from fast_dvlm.data.draw import COLOURS, SHAPES
from fast_dvlm.data.scenes import LETTERS
from fast_dvlm.demo.recipe import DemoRecipe, ar_config
from fast_dvlm.demo.vision_pretrain import Scene, read_scenes, visual_tokens
from fast_dvlm.eval.accuracy import mean_accuracy, read_items, score_answers
from fast_dvlm.train.trainer import convert
from fast_dvlm.vlm import DiffusionVLM, load

ENTITIES = (*sorted(COLOURS), *LETTERS, *SHAPES)  # what a question can name; id 0 pads
QUESTIONS = {
    "spatial": re.compile(r"Where is the (\w+) \w+ relative to the (\w+) \w+\?"),
    "chart": re.compile(r"What is the value of the (\w+) bar\?"),
    "diagram": re.compile(r"What shape is labelled (\w)\?"),
    "presence": re.compile(r"Is there a (\w+) (\w+) in the image\?"),
    "map": re.compile(r"Which city is in the (\w+) region\? (.*)"),
}
TASKS = tuple(QUESTIONS)
ALL_TASKS = tuple(DEMO_TASKS)  # what the AR stage trains on
ARMS = ("together", "curriculum", "ar")


def binding(task: str, question: str, key: str) -> tuple[list[int], str]:
    """The entities `question` names (ids, padded to two) and the answer to read for them; for `map`
    the city itself rather than its option letter, since the options are shuffled per question."""
    form = QUESTIONS.get(task)
    match = form.fullmatch(question) if form else None
    if match is None:
        raise ValueError(f"not a {task} binding question: {question!r}")
    names, answer = list(match.groups()), key
    if task == "map":
        answer = dict(re.findall(r"([A-C])\. (\w+)", names.pop()))[key]
    ids = [ENTITIES.index(name) + 1 for name in names]
    return ids + [0] * (2 - len(ids)), answer


class EntityReadout(nn.Module):
    """Each named entity attends over the visual tokens by content (no position, as a language
    model's attention would find it); an MLP reads the attended values and names the answer."""

    def __init__(self, dim: int, answers: int) -> None:
        super().__init__()
        self.entity = nn.Embedding(len(ENTITIES) + 1, dim)
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.read = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, answers))

    def forward(self, tokens: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """`tokens` `[B, N, D]`, `entities` `[B, 2]` -> answer logits `[B, answers]`."""
        keys = self.key(tokens)
        weights = torch.softmax(self.entity(entities) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)
        return self.read((weights @ self.value(tokens)).flatten(1))


def phases(arm: str, steps: int, alone: list[str], alone_steps: int) -> list[tuple[str, int]]:
    """(task or "together", steps) in training order."""
    if arm == "together":
        return [("together", steps)]
    if len(alone) * alone_steps >= steps:
        raise ValueError(
            f"the curriculum's {len(alone)} x {alone_steps} steps alone leave nothing of the {steps} "
            "steps for the tasks together: raise --steps or lower --alone-steps"
        )
    return [(task, alone_steps) for task in alone] + [("together", steps - len(alone) * alone_steps)]


class Readouts:
    """One `EntityReadout` per binding task over `vlm`'s visual tokens; the answer labels are those
    of the training scenes."""

    def __init__(self, vlm: DiffusionVLM, train: list[Scene], heads: int = 1) -> None:
        self.vlm = vlm
        self.answers = {
            task: sorted({binding(task, q, k)[1] for s in train if s.task == task for q, k in s.questions})
            for task in TASKS
        }
        dim = vlm.model.config.text_config.hidden_size
        self.heads = nn.ModuleDict(
            {t: nn.ModuleList(EntityReadout(dim, len(self.answers[t])) for _ in range(heads)) for t in TASKS}
        )

    def tokens(self, scenes: list[Scene]) -> torch.Tensor:
        """The visual tokens of every scene's image, in one tower call."""
        return visual_tokens(self.vlm, [Image.open(s.image).convert("RGB") for s in scenes])

    def logits(
        self, task: str, scenes: list[Scene], tokens: torch.Tensor, first_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and answer indices for the questions of `scenes` (all of `task`), read from their
        visual tokens `tokens`."""
        rows, entities, answers = [], [], []
        for row, scene in enumerate(scenes):
            for question, key in scene.questions[:1] if first_only else scene.questions:
                ids, answer = binding(task, question, key)
                rows.append(row), entities.append(ids)
                answers.append(self.answers[task].index(answer) if answer in self.answers[task] else -100)
        logits = [head(tokens[rows], torch.tensor(entities)) for head in self.heads[task]]
        return torch.stack(logits), torch.tensor(answers)

    def loss(self, scenes: list[Scene]) -> torch.Tensor:
        """Cross-entropy averaged within each task, then over the tasks in the batch."""
        tokens, losses = self.tokens(scenes), []
        for task in sorted({s.task for s in scenes}):
            rows = [k for k, s in enumerate(scenes) if s.task == task]
            logits, answers = self.logits(task, [scenes[k] for k in rows], tokens[rows])
            losses.append(F.cross_entropy(logits.flatten(0, 1), answers.repeat(len(logits))))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, val: list[Scene]) -> dict[str, float]:
        """Percent right per task over `val`'s first questions."""
        self.vlm.model.eval()
        out = {}
        for task in TASKS:
            scenes = [s for s in val if s.task == task]
            logits, answers = self.logits(task, scenes, self.tokens(scenes), first_only=True)
            out[task] = 100.0 * (logits.mean(0).argmax(-1) == answers).float().mean().item()
        self.vlm.model.train()
        return out


def train_readouts(
    vlm: DiffusionVLM,
    train: list[Scene],
    val: list[Scene],
    schedule: list[tuple[str, int]],
    batch_size: int,
    lr: float,
    seed: int,
    eval_every: int = 400,
    heads: int = 1,
    anchor: list[Scene] = (),
    anchor_weight: float = 0.0,
) -> list[dict]:
    """Train `vlm`'s tower and projector under the readouts, phase by phase; the validation accuracy
    at each phase's end and every `eval_every` steps.

    With `anchor_weight`, every step also draws half a batch of `anchor` scenes (the other tasks) and
    adds `anchor_weight` times the distance of their visual tokens from the untrained tower's (mean
    squared error over the mean square): what the language model reads there should not move."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    reference = copy.deepcopy(vlm) if anchor_weight else None  # the base tower, never trained
    if reference is not None:
        reference.model.eval()
    readouts = Readouts(vlm, train, heads)
    trained = vlm.vision_parameters() + list(readouts.heads.parameters())
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    total = sum(steps for _, steps in schedule)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=min(50, total // 10))
    by_task = {task: [s for s in train if s.task == task] for task in TASKS}
    log, step, started = [], 0, time.perf_counter()
    vlm.model.train()
    for phase, steps in schedule:
        pool = [s for task in TASKS for s in by_task[task]] if phase == "together" else by_task[phase]
        for k in tqdm(range(steps), f"readouts, {phase}"):
            loss = readouts.loss(rng.sample(pool, batch_size))
            if reference is not None:
                images = [Image.open(s.image).convert("RGB") for s in rng.sample(anchor, batch_size // 2)]
                with torch.no_grad():
                    target = visual_tokens(reference, images)
                drift = F.mse_loss(visual_tokens(vlm, images), target) / target.pow(2).mean()
                loss = loss + anchor_weight * drift
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % eval_every == 0 or k == steps - 1:
                seconds = time.perf_counter() - started
                row = {"step": step, "phase": phase, "loss": loss.item(), "seconds": seconds}
                log.append(row | {"val": readouts.accuracy(val)})
    vlm.model.eval()
    return log


def parse_repeat(spec: str) -> dict[str, int]:
    """`"spatial=5,chart=4"` -> `{"spatial": 5, "chart": 4}`: how many times an AR epoch holds each
    named task's training records (every other task once)."""
    repeat = {}
    for item in filter(None, spec.split(",")):
        task, _, times = item.partition("=")
        if task not in ALL_TASKS or not times.isdigit() or int(times) < 1:
            raise ValueError(
                f"--ar-repeat item {item!r}: expected TASK=TIMES with TIMES >= 1 and TASK one of "
                f"{', '.join(ALL_TASKS)}"
            )
        repeat[task] = int(times)
    return repeat


def repeated_split(train_file: Path, repeat: dict[str, int]) -> Path:
    """The training split with each record of a task in `repeat` written that many times, next to
    the split so its image paths still resolve (the trainer shuffles every epoch)."""
    if not repeat:
        return train_file
    name = "-".join(f"{task}{times}" for task, times in sorted(repeat.items()))
    out = train_file.with_name(f"{train_file.stem}-repeat-{name}.json")
    if not out.exists():
        records = json.loads(train_file.read_text())
        out.write_text(json.dumps([r for r in records for _ in range(repeat.get(r["task"], 1))]))
    return out


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
        start = work / f"{arm}-{args.steps}-steps{alone}{heads}{anchor}-seed-{args.seed}"
        if not (start / "readout.json").exists():
            schedule = phases(arm, args.steps, args.alone.split(","), args.alone_steps)
            vlm = load(args.base)
            scenes = read_scenes(data / "train.json")
            train = [s for s in scenes if s.task in TASKS]
            val = [s for s in read_scenes(data / "val.json", first_only=True) if s.task in TASKS]
            others = [s for s in scenes if s.task not in TASKS]
            log = train_readouts(
                vlm, train, val, schedule, args.batch_size, args.lr, args.seed, args.eval_every, args.heads,
                others, args.anchor,
            )  # fmt: skip
            vlm.save_pretrained(start)
            (start / "readout.json").write_text(json.dumps({"schedule": schedule, "readout": log}, indent=1))
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
    repeat = ",".join(f"{task}={times}" for task, times in settings["ar_repeat"].items())
    frozen = " --ar-freeze-tower" if settings["ar_freeze_tower"] else ""
    return (f" --ar-repeat {repeat}" if repeat else "") + frozen


def markdown(results: dict, base: dict | None, settings: dict) -> str:
    """The readout table (accuracy per task at each logged step) and, after AR, the per-task table."""
    command = (
        f"`python -m benchmarks.binding_readouts --arms {','.join(results)} --steps {settings['steps']} "
        f"--alone {settings['alone']} --alone-steps {settings['alone_steps']} "
        f"--heads {settings.get('heads', 1)} --eval-every {settings.get('eval_every', 400)} "
        + (f"--anchor {settings['anchor']} " if settings.get("anchor") else "")
        + ("--score-readouts " if settings.get("score_readouts") else "")
        + f"--ar-steps {settings['ar_steps']}{ar_variant(settings)}`"
    )
    lines = [
        "# Can the tower hold several bindings at once?",
        "",
        f"{command} (base `{settings['base']}`, batch {settings['batch_size']}, "
        f"readout lr {settings['lr']}). "
        "Readout accuracy (the mean logits of a task's readouts): each validation record's first "
        "question, 60 a task.",
        "",
        "| arm | step | phase | " + " | ".join(TASKS) + " | minutes |",
        "|---|---|---|" + "---|" * (len(TASKS) + 1),
    ]
    for arm, r in results.items():
        for row in r.get("readout", []):
            cells = " | ".join(f"{row['val'][t]:.1f}" for t in TASKS)
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/binding_readouts", help="data, checkpoints, finished arms")
    parser.add_argument("--out", default=None, help="also write OUT.md (the tables) and OUT.json")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := sorted(set(arms) - set(ARMS)):
        parser.error(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    if bad := sorted(set(args.alone.split(",")) - set(TASKS)):
        parser.error(f"--alone names {', '.join(bad)}: choose from {', '.join(TASKS)}")
    try:
        args.ar_repeat = parse_repeat(args.ar_repeat)
    except ValueError as error:
        parser.error(str(error))
    if args.anchor < 0:
        parser.error(f"--anchor must be 0 or more, got {args.anchor}")
    if args.heads < 1:
        parser.error(f"--heads must be at least 1, got {args.heads}")
    if "ar" in arms and not args.ar_steps:
        parser.error("the `ar` arm is the AR stage's control: give --ar-steps")
    if "curriculum" in arms:
        try:
            phases("curriculum", args.steps, args.alone.split(","), args.alone_steps)
        except ValueError as error:
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
