"""Binding readouts: put into the vision tower which entity each value belongs to (issue 17).

Five tasks ask about one entity among several in the image: `spatial` (where is the red shape
relative to the blue one), `chart` (the red bar's value), `diagram` (the shape labelled B),
`presence` (is there a red circle) and `map` (the city in the red region). Trained through the
language model alone, the tower never learns these bindings: the AR base answers them with another
entity's answer. Here a small readout per task asks for the binding directly: each entity the
question names attends over the visual tokens by content and an MLP names the answer; its gradient
trains the tower and projector (never the language model). Measured in `benchmarks/binding_readouts.py`:

- one readout learns a binding or not depending on its seed (spatial alone after 300 steps: 48, 80
  and 78% for seeds 0-2); four per task, scored by their mean logits, reach 93% after 200 steps;
- trained together from the start, the five stay near chance; a curriculum (spatial, chart and
  diagram alone for 300 steps each, then the five together) holds spatial at 92%;
- the language model then reads the tower's spatial binding (92%) when the next AR cycle sees the
  spatial records five times per epoch and trains the tower too, which also gives back what the
  readouts took from the text and digit tasks (validation mean 57.7% against 54.7% before).

Those figures start from the finished AR base (`demo-ar`, both AR cycles) and add 2000 AR steps.
Between the recipe's two AR cycles, where its time budget has room for them, they did not lift the
mean in the recipe's own run (54.7%, spatial at 100% but receipt and counting down), nor with the
number readouts added (53.2%; `steps` numbers read in place 53% against 35%), so the recipe leaves
them off (`DemoRecipe.readout_steps`).
"""

from __future__ import annotations

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

from ..data import TASKS
from ..data.draw import COLOURS, SHAPES
from ..data.numbers import LARGER_QUESTION, STEP_NUMBERS, SUM_QUESTION
from ..data.scenes import LETTERS
from ..errors import FastDVLMError
from ..vlm import DiffusionVLM
from .vision_pretrain import Scene, optimizer_step, resume_checkpoint, save_checkpoint, visual_tokens

ENTITIES = (*sorted(COLOURS), *LETTERS, *SHAPES)  # what a question can name; id 0 pads
QUESTIONS = {
    "spatial": re.compile(r"Where is the (\w+) \w+ relative to the (\w+) \w+\?"),
    "chart": re.compile(r"What is the value of the (\w+) bar\?"),
    "diagram": re.compile(r"What shape is labelled (\w)\?"),
    "presence": re.compile(r"Is there a (\w+) (\w+) in the image\?"),
    "map": re.compile(r"Which city is in the (\w+) region\? (.*)"),
}
BINDING_TASKS = tuple(QUESTIONS)
# The number tasks name no entity: their readouts ask for each number by its place (`steps`: the
# boxes from left to right, as its answer lists them) or its rank (`arithmetic`), so the tower has
# to tell the numbers apart, which the language model's answers alone do not make it do.
NUMBER_PLACES = {"steps": ("first", "second", "third"), "arithmetic": ("larger", "smaller")}
READOUT_TASKS = BINDING_TASKS + tuple(NUMBER_PLACES)


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


def numbers(scene: Scene) -> list[str]:
    """The numbers of a number-task scene in the order of `NUMBER_PLACES[scene.task]`."""
    if scene.task == "steps":
        match = STEP_NUMBERS.search(scene.answer)
        if match is None:
            raise ValueError(f"a steps scene without its numbers in the answer: {scene.answer!r}")
        return list(match.groups())
    if scene.task == "arithmetic":
        keys = dict(scene.questions)
        total, larger = keys.get(SUM_QUESTION), keys.get(LARGER_QUESTION)
        if total is None or larger is None:
            raise ValueError(f"an arithmetic scene without its sum and larger number: {scene.questions}")
        return [larger, str(int(total) - int(larger))]
    raise ValueError(f"not a number task: {scene.task}")


def targets(scene: Scene, first_only: bool = False) -> list[tuple[list[int], str]]:
    """What the readouts of `scene.task` learn from `scene`: (entity ids padded to two, answer) for
    each question (the first only with `first_only`), or for each number of a number task."""
    if scene.task in NUMBER_PLACES:
        return [([place + 1, 0], value) for place, value in enumerate(numbers(scene))]
    questions = scene.questions[:1] if first_only else scene.questions
    return [binding(scene.task, question, key) for question, key in questions]


def curriculum(
    steps: int, alone: list[str], alone_steps: int, tasks: tuple[str, ...] = BINDING_TASKS
) -> list[tuple[str, int]]:
    """(task or "together", steps) in training order: each task of `alone` alone, then all of
    `tasks` together for the rest of `steps` (no `alone`: together throughout)."""
    if len(set(alone)) < len(alone):
        raise FastDVLMError(f"readouts alone: each task once, got {', '.join(alone)}")
    if alone and alone_steps < 1:
        raise FastDVLMError(f"readouts alone: at least 1 step a task, got {alone_steps}")
    if bad := sorted(set(tasks) - set(READOUT_TASKS)):
        raise FastDVLMError(f"readouts: {', '.join(bad)}: no readout (those are {', '.join(READOUT_TASKS)})")
    if bad := sorted(set(alone) - set(tasks)):
        raise FastDVLMError(
            f"readouts alone: {', '.join(bad)}: not among the readouts' tasks ({', '.join(tasks)})"
        )
    if len(alone) * alone_steps >= steps:
        raise FastDVLMError(
            f"the curriculum's {len(alone)} x {alone_steps} steps alone leave nothing of the {steps} "
            "steps for the tasks together: raise the steps or lower the steps alone"
        )
    return [(task, alone_steps) for task in alone] + [("together", steps - len(alone) * alone_steps)]


class EntityReadout(nn.Module):
    """Each named entity attends over the visual tokens by content (no position, as a language
    model's attention would find it); an MLP reads the attended values and names the answer."""

    def __init__(self, dim: int, answers: int, entities: int = len(ENTITIES)) -> None:
        super().__init__()
        self.entity = nn.Embedding(entities + 1, dim)
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.read = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, answers))

    def forward(self, tokens: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """`tokens` `[B, N, D]`, `entities` `[B, 2]` -> answer logits `[B, answers]`."""
        keys = self.key(tokens)
        weights = torch.softmax(self.entity(entities) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)
        return self.read((weights @ self.value(tokens)).flatten(1))


class Readouts:
    """`heads` `EntityReadout`s per task of `tasks` over `vlm`'s visual tokens, each from its own
    initialisation (one alone learns a binding or not depending on its seed); the answer labels are
    those of the training scenes."""

    def __init__(
        self, vlm: DiffusionVLM, train: list[Scene], heads: int = 1, tasks: tuple[str, ...] = BINDING_TASKS
    ) -> None:
        self.vlm, self.tasks = vlm, tasks
        self.answers = {
            task: sorted({answer for s in train if s.task == task for _, answer in targets(s)})
            for task in tasks
        }
        dim = vlm.model.config.text_config.hidden_size
        entities = {task: len(NUMBER_PLACES.get(task, ENTITIES)) for task in tasks}
        self.heads = nn.ModuleDict(
            {
                task: nn.ModuleList(
                    EntityReadout(dim, len(self.answers[task]), entities[task]) for _ in range(heads)
                )
                for task in tasks
            }
        )

    def tokens(self, scenes: list[Scene]) -> torch.Tensor:
        """The visual tokens of every scene's image, in one tower call."""
        return visual_tokens(self.vlm, [Image.open(s.image).convert("RGB") for s in scenes])

    def logits(
        self, task: str, scenes: list[Scene], tokens: torch.Tensor, first_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's logits `[heads, questions, answers]` and the answer indices for the questions
        of `scenes` (all of `task`), read from their visual tokens `tokens`."""
        rows, entities, answers = [], [], []
        for row, scene in enumerate(scenes):
            for ids, answer in targets(scene, first_only):
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
        """Percent right per task over `val`'s first questions, or every number of a number task (the
        heads' mean logits)."""
        self.vlm.model.eval()
        out = {}
        for task in self.tasks:
            scenes = [s for s in val if s.task == task]
            logits, answers = self.logits(task, scenes, self.tokens(scenes), first_only=True)
            out[task] = 100.0 * (logits.mean(0).argmax(-1) == answers).float().mean().item()
        self.vlm.model.train()
        return out


def train_readouts(
    vlm: DiffusionVLM,
    scenes: list[Scene],
    val: list[Scene],
    schedule: list[tuple[str, int]],
    batch_size: int,
    lr: float,
    seed: int = 0,
    heads: int = 1,
    anchor_weight: float = 0.0,
    eval_every: int = 300,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 250,
    progress: bool = True,
    tasks: tuple[str, ...] = BINDING_TASKS,
) -> dict:
    """Train `vlm`'s tower and projector in place under the readouts of `tasks`, phase by phase
    (`schedule`, from `curriculum` with the same `tasks`); `scenes` the training split, `val` the
    validation split's scenes (scored on their first questions, the number tasks on every number).
    Returns the schedule, the heads per task, the readouts' validation accuracy at each phase's end
    and every `eval_every` steps (`log`), and the time.

    With `anchor_weight`, every step also draws half a batch of the other tasks' scenes and adds
    `anchor_weight` times the distance of their visual tokens from the starting tower's (mean squared
    error over the mean square): what the language model reads there should not move. With
    `checkpoint` (a file), the whole state is saved there every `checkpoint_every` steps and picked up
    by a rerun on the same starting model, which then continues as the uninterrupted run would have."""
    if heads < 1:
        raise FastDVLMError(f"readouts: at least one a task, got {heads}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pools = {task: [s for s in scenes if s.task == task] for task in tasks}  # what each phase draws
    pools["together"] = [s for task in tasks for s in pools[task]]
    others = [s for s in scenes if s.task not in tasks]
    val = [s for s in val if s.task in tasks]
    if anchor_weight and not others:
        raise FastDVLMError("the anchor holds the other tasks' visual tokens, but the split has none")
    reference = copy.deepcopy(vlm) if anchor_weight else None  # the starting tower, never trained
    if reference is not None:
        reference.model.eval()
    readouts = Readouts(vlm, pools["together"], heads, tasks)
    trained = vlm.vision_parameters() + list(readouts.heads.parameters())
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    plan = [phase for phase, steps in schedule for _ in range(steps)]
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=min(50, len(plan) // 10))
    state, done, seconds = resume_checkpoint(checkpoint, optimizer, rng)
    log = []
    if state:
        vlm.model.load_state_dict(state["model"])
        readouts.heads.load_state_dict(state["heads"])
        scheduler.load_state_dict(state["scheduler"])
        log = state["log"]
    started = time.perf_counter() - seconds
    vlm.model.train()
    bar = tqdm(
        range(done, len(plan)), "binding readouts", initial=done, total=len(plan), disable=not progress
    )
    for step in bar:
        phase = plan[step]
        pool = pools[phase]
        loss = readouts.loss(rng.sample(pool, min(batch_size, len(pool))))  # toy splits hold fewer
        if reference is not None:
            drawn = rng.sample(others, min(batch_size // 2, len(others)))
            images = [Image.open(s.image).convert("RGB") for s in drawn]
            with torch.no_grad():
                target = visual_tokens(reference, images)
            drift = F.mse_loss(visual_tokens(vlm, images), target) / target.pow(2).mean()
            loss = loss + anchor_weight * drift
        optimizer_step(loss, trained, optimizer, scheduler)
        bar.set_postfix(phase=phase, loss=f"{loss.item():.3f}")
        done = step + 1
        if done % eval_every == 0 or done == len(plan) or plan[done] != phase:
            row = {
                "step": done,
                "phase": phase,
                "loss": loss.item(),
                "seconds": time.perf_counter() - started,
            }
            log.append(row | {"val": readouts.accuracy(val)})
            if progress:
                bar.write(f"readouts at step {done} ({phase}): {json.dumps(log[-1]['val'])}")
        if checkpoint is not None and done % checkpoint_every == 0 and done < len(plan):
            weights = {"model": vlm.model.state_dict(), "heads": readouts.heads.state_dict(),
                       "scheduler": scheduler.state_dict(), "log": log}  # fmt: skip
            save_checkpoint(checkpoint, weights, optimizer, rng, done, time.perf_counter() - started)
    vlm.model.eval()
    return {"schedule": schedule, "heads": heads, "log": log, "seconds": time.perf_counter() - started}


def parse_repeat(spec: str) -> dict[str, int]:
    """`"spatial=5,chart=4"` -> `{"spatial": 5, "chart": 4}`: how many times an AR epoch holds each
    named task's training records (every other task once)."""
    repeat = {}
    for item in filter(None, spec.split(",")):
        task, _, times = item.partition("=")
        if task not in TASKS or not times.isdigit() or int(times) < 1:
            raise FastDVLMError(
                f"--ar-repeat item {item!r}: expected TASK=TIMES with TIMES >= 1 and TASK one of "
                f"{', '.join(TASKS)}"
            )
        repeat[task] = int(times)
    return repeat


def format_repeat(repeat: dict[str, int]) -> str:
    """`parse_repeat`'s inverse: `{"spatial": 5}` -> `"spatial=5"`."""
    return ",".join(f"{task}={times}" for task, times in repeat.items())


def repeated_split(train_file: Path, repeat: dict[str, int]) -> Path:
    """The training split with each record of a task in `repeat` written that many times, next to
    the split so its image paths still resolve (the trainer shuffles every epoch)."""
    if not repeat:
        return train_file
    name = "-".join(f"{task}{times}" for task, times in sorted(repeat.items()))
    out = train_file.with_name(f"{train_file.stem}-repeat-{name}.json")
    if not out.exists():  # written whole or not at all: a later run trusts what it finds
        records = json.loads(train_file.read_text())
        partial = out.with_suffix(".tmp")
        partial.write_text(json.dumps([r for r in records for _ in range(repeat.get(r["task"], 1))]))
        partial.replace(out)
    return out
