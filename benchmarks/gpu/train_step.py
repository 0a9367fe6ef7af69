"""One conversion-training step with accelerate: peak memory and step time per noisy-stream layout.

`full` puts vision in both streams; `text` is the paper's vision-efficient layout; `response` (the
default) keeps only response tokens in the noisy copies. The three give the same loss (tested on
CPU); this measures what each costs at the model's real shape.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image

from fast_dvlm import DiffusionVLM
from fast_dvlm.conversion.objective import Sample
from fast_dvlm.conversion.recipe import Recipe
from fast_dvlm.models.family import TinySize
from fast_dvlm.models.tiny import build_tiny_model
from fast_dvlm.train.config import TrainConfig
from fast_dvlm.train.data import Conversation, render
from fast_dvlm.train.trainer import ConversionModel

from .models import VOCAB, sync

LAYOUTS = ("full", "text", "response")


def samples(vlm: DiffusionVLM, workdir: Path, batch: int, side: int, answer_words: int) -> list[Sample]:
    """`batch` conversations, each one image of `side` pixels and a long answer."""
    rendered = []
    for k in range(batch):
        path = workdir / f"image{k}.png"
        Image.new("RGB", (side, side), (40 * k % 256, 120, 200)).save(path)
        answer = " ".join(f"word{(k * 7 + i) % 50}" for i in range(answer_words))
        rendered.append(
            render(vlm.processor, vlm.family, Conversation([path], [("<image>\nDescribe.", answer)]))
        )
    return rendered


def train_step_costs(
    size: TinySize, device: str, workdir: Path, batch: int, answer_words: int, real_vocab: bool
) -> dict[str, dict[str, float]]:
    """{layout: peak memory (GB), step seconds (the second of two steps), loss, tokens per row}."""
    cuda = device.startswith("cuda")
    with torch.device(device):
        vlm = DiffusionVLM(
            *build_tiny_model("qwen2_5_vl", size, min_embedding_rows=VOCAB if real_vocab else 0)
        )
    vlm.model.train()
    data = samples(vlm, workdir, batch, size.image_size, answer_words)
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    out = {}
    for layout in LAYOUTS:
        config = TrainConfig(recipe=Recipe(noisy_layout=layout))
        module = ConversionModel(vlm, config)
        # lr 0: AdamW's state and update still cost what they cost, but every layout sees the same
        # weights, so their losses must agree (a check that the layouts ran the same objective)
        optimizer = torch.optim.AdamW(module.parameters(), lr=0.0)
        module, optimizer = accelerator.prepare(module, optimizer)
        times = []
        for step in range(2):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            loss = module(data, 32, list(range(step * batch, (step + 1) * batch)))
            accelerator.backward(loss.total)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
        out[layout] = {"peak_gb": peak, "step_s": times[-1], "loss": loss.total.item()}
        del module, optimizer
        accelerator.free_memory()
    return out
