"""`convert`: fine-tune a whole AR VLM into a block-diffusion VLM, on one process or many (accelerate).

Determinism is by construction, so that a killed run resumes on the same loss curve and N
processes train like one: the data order is a seeded permutation per epoch, a global batch is
split evenly over processes, and each sample's noise is seeded by (seed, step, sample index).
A checkpoint therefore only needs the weights, optimizer, scheduler and step.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import nn
from tqdm import tqdm
from transformers import get_scheduler

from ..conversion.loss import LossParts
from ..conversion.objective import Sample, conversion_forward
from ..conversion.schedule import annealed_block_size
from ..errors import FastDVLMError
from ..models.family import Family
from ..vlm import DiffusionVLM, load
from .config import TrainConfig
from .data import ConversationDataset

LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"


class ConversionModel(nn.Module):
    """The VLM plus the conversion objective, so data-parallel wrappers see one forward."""

    def __init__(self, vlm: DiffusionVLM, config: TrainConfig) -> None:
        super().__init__()
        self.model = vlm.model
        self.family: Family = vlm.family
        self.recipe = config.recipe
        self.mask_id = vlm.settings.mask_token_id

    def forward(self, samples: list[Sample], block_size: int, seeds: list[int]) -> LossParts:
        loss, _, _ = conversion_forward(
            self.model, self.family, samples, self.recipe, block_size, seeds, self.mask_id
        )
        return loss


def sample_seed(seed: int, step: int, index: int) -> int:
    """The noise seed of one sample at one step: independent of process count and of resuming."""
    return (seed * 1_000_003 + step * 10_007 + index) % (2**63 - 1)


class Schedule:
    """Which samples each process trains on at each micro-step, and with which block size.

    Each epoch is a seeded permutation of the data. With `lengths`, each run of `GROUP` batches of
    it is sorted by length, cut into batches, and the batches are shuffled again: a batch then pads
    to a length near its samples' own (measured on the demo data: 59% of padded tokens were real),
    while every sample still comes once per epoch."""

    GROUP = 16  # batches sorted together

    def __init__(
        self, config: TrainConfig, dataset_size: int, rank: int, world: int, lengths: list[int] | None = None
    ) -> None:
        if config.batch_size % world:
            raise FastDVLMError(
                f"batch_size ({config.batch_size}) must be divisible by the {world} processes"
            )
        self.config, self.size, self.rank = config, dataset_size, rank
        self.per_process = config.batch_size // world
        self.lengths = lengths
        self._epoch: tuple[int, list[int]] = (-1, [])

    def order(self, epoch: int) -> list[int]:
        """The sample order of one epoch (the last one is kept: consecutive steps share an epoch)."""
        if self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.config.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            if self.lengths is not None:
                order = self.grouped(order, generator)
            self._epoch = (epoch, order)
        return self._epoch[1]

    def grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        batch = self.config.batch_size
        out: list[int] = []
        for start in range(0, len(order), batch * self.GROUP):
            run = sorted(order[start : start + batch * self.GROUP], key=lambda i: self.lengths[i])
            batches = [run[k : k + batch] for k in range(0, len(run), batch)]
            for b in torch.randperm(len(batches), generator=generator).tolist():
                out += batches[b]
        return out

    def indices(self, step: int, micro: int) -> list[int]:
        """This process's share of the global batch of (step, micro)."""
        position = (step * self.config.grad_accum + micro) * self.config.batch_size
        out = []
        for k in range(self.rank * self.per_process, (self.rank + 1) * self.per_process):
            epoch, offset = divmod(position + k, self.size)
            out.append(self.order(epoch)[offset])
        return out

    def stage(self, step: int) -> tuple[int, float]:
        """(stage number, progress within the stage); stage 1 exists only in two-stage conversion."""
        recipe, steps = self.config.recipe, self.config.steps
        if not recipe.two_stage:
            return 2, step / steps
        first = max(1, round(steps * recipe.stage1_fraction))
        return (1, step / first) if step < first else (2, (step - first) / max(steps - first, 1))

    def block_size(self, step: int) -> int:
        recipe = self.config.recipe
        return annealed_block_size(self.stage(step)[1], recipe.block_sizes, recipe.anneal_block_size)


def fetch(dataset: ConversationDataset, indices: list[int]) -> list[Sample]:
    """Render samples; one over `max_length` is replaced by the next usable record, deterministically."""
    samples = []
    for index in indices:
        for tried in range(len(dataset)):
            sample = dataset[(index + tried) % len(dataset)]
            if sample is not None:
                samples.append(sample)
                break
        else:
            raise FastDVLMError(f"every record is longer than max_length={dataset.max_length} tokens")
    return samples


def length_chunks(samples: list[Sample], parts: int) -> list[tuple[list[int], bool]]:
    """`samples`' indices in `parts` chunks of similar token length (sorted, cut as evenly as they
    go), each with whether it is the last. A batch pads every row to its longest sample, and the
    demo's records differ in length by task and turns, so running a micro-batch as chunks
    computes fewer padded tokens; with each chunk's loss weighted by its share of the
    samples the gradient is the micro-batch's own (every loss here is a mean over samples; each
    sample keeps its noise seed)."""
    order = sorted(range(len(samples)), key=lambda k: samples[k].input_ids.shape[0])
    parts = min(parts, len(samples))
    cuts = [round(len(order) * k / parts) for k in range(parts + 1)]
    chunks = [order[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    return [(chunk, k == len(chunks) - 1) for k, chunk in enumerate(chunks)]


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def convert(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train `base` on `data` with the conversion recipe; write the converted checkpoint to `out`."""
    out = Path(out)
    accelerator = Accelerator(
        mixed_precision=mixed_precision(config.mixed_precision),
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main = accelerator.is_main_process
    vlm = load(base)
    if config.freeze_vision and not vlm.vision_modules():
        raise FastDVLMError(f"freeze_vision is set, but {base} is a text-only model: it has no vision side")
    datasets = {
        2: ConversationDataset(
            data, vlm.processor, vlm.family, config.image_root, config.max_length, progress=progress and main
        )
    }
    if config.recipe.two_stage:
        datasets[1] = datasets[2].text_only_view()
    lengths = datasets[2].text_lengths() if config.group_by_length else None
    schedule = Schedule(
        config, len(datasets[2]), accelerator.process_index, accelerator.num_processes, lengths
    )
    if config.gradient_checkpointing:
        vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vlm.model.train()
    torch.manual_seed(config.seed)
    if config.freeze_vision:  # weights and batch-norm statistics alike
        for part in vlm.vision_modules():
            part.requires_grad_(False).eval()
    module = ConversionModel(vlm, config)
    trained = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.lr_schedule, optimizer, config.warmup_steps, config.steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    start = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / "progress.json").read_text())["step"]
        if main:
            print(f"resuming from {checkpoint} (step {start} of {config.steps})")
            truncate_log(out / LOG_FILE, start)
    elif main and (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run starts a fresh log
    if main:
        out.mkdir(parents=True, exist_ok=True)
        print(datasets[2].report())

    bar = tqdm(total=config.steps, initial=start, desc="training", disable=not (progress and main))
    for step in range(start, config.steps):
        began = time.perf_counter()
        stage, _ = schedule.stage(step)
        block_size = schedule.block_size(step)
        totals = torch.zeros(3, device=accelerator.device)  # reduced across processes: NCCL needs it there
        for micro in range(config.grad_accum):
            indices = schedule.indices(step, micro)
            samples = fetch(datasets[stage], indices)
            seeds = [sample_seed(config.seed, step, i) for i in indices]
            syncing = micro == config.grad_accum - 1
            for chunk, last in length_chunks(samples, config.length_split):
                share = len(chunk) / len(samples) / config.grad_accum  # each loss is a mean over samples
                with accelerator.no_sync(module) if not (syncing and last) else nullcontext():
                    parts = module([samples[k] for k in chunk], block_size, [seeds[k] for k in chunk])
                    accelerator.backward(parts.total * share)
                totals += torch.stack([parts.total, parts.diffusion, parts.ar]).detach().float() * share
        accelerator.clip_grad_norm_(trained, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        totals = accelerator.reduce(totals, "mean")
        record = {
            "step": step + 1,
            "loss": totals[0].item(),
            "diffusion_loss": totals[1].item(),
            "ar_loss": totals[2].item(),
            "block_size": block_size,
            "stage": stage,
            "lr": lr,
            "seconds": time.perf_counter() - began,
        }
        if main:
            with (out / LOG_FILE).open("a") as log:
                log.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", diff=f"{record['diffusion_loss']:.3f}",
                            ar=f"{record['ar_loss']:.3f}", B=block_size)  # fmt: skip
            bar.update(1)
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_checkpoint(accelerator, out, step + 1, config.keep_checkpoints)
    bar.close()

    accelerator.wait_for_everyone()
    if main:
        final = DiffusionVLM(accelerator.unwrap_model(module).model.eval(), vlm.processor, vlm.family)
        final.settings.block_size = config.recipe.final_block_size
        final.settings.clean_attention = config.recipe.clean_attention
        final.settings.recipe = asdict(config) | {"recipe": asdict(config.recipe), "base": str(base)}
        final.settings.recipe["recipe"]["block_sizes"] = list(config.recipe.block_sizes)
        final.save_pretrained(out)
        print(f"converted checkpoint written to {out}; {datasets[2].report()}")
    accelerator.wait_for_everyone()
    return out


def truncate_log(path: Path, step: int) -> None:
    """Drop log records past `step`: a resumed run rewrites them."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """Write the full training state atomically (temporary folder, then rename); keep the last `keep`."""
    final = out / CHECKPOINTS / f"step-{step}"
    staging = out / CHECKPOINTS / f".step-{step}.partial"
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / "progress.json").write_text(json.dumps({"step": step}))
        staging.rename(final)
        older = sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]
        for old in older:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
