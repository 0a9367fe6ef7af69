"""Stage 0a of the demo recipe: a short reading pretext before the tower learns the tasks.

Words and digits drawn in the image are what stage 0's task head learns last, or not at all: after
its 5000 steps the head read the sign word 17% of the time and the arithmetic digits at chance. A
few hundred steps of reading random characters (A-Z, 0-9) drawn in the tasks' font, sizes and plates
first change that. Measured by a probe not kept in the repository (the demo's FastViT tower at 192 px,
batch 32, lr 1e-3): a sign-word probe trained after the pretext reaches 78/85/83/93% of validation
words at 50/100/150/200 steps, against 12/20/28/57% from a fresh tower and 12/20/40/60% after the
same pretext with random labels (so the gain is from reading, not from extra steps); the receipt
total's two digits 17/52/80/88% against 8/62/77/75%. After 300 pretext steps the gain was small
(15/27/55/65%). The pretext itself is far from solved in 800 steps (6% of held-out characters,
chance 2.8%): what carries over is where the tower learns to look, not a finished reader.

Each step draws a fresh batch from a seeded generator, so there is no data set to build; the head
(one linear map from the flattened visual tokens to every character position) is discarded.
"""

from __future__ import annotations

import random
import string
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..data.draw import COLOURS, canvas, text
from ..vlm import DiffusionVLM
from .vision_pretrain import optimizer_step, resume_checkpoint, save_checkpoint, visual_tokens

ALPHABET = string.ascii_uppercase + string.digits
LENGTH = 4  # characters per image, read in order
HELD_OUT_SEED = 10_000  # held-out images come from seeds no training step draws from


def glyph_image(rng: random.Random, side: int) -> tuple[Image.Image, list[int]]:
    """`LENGTH` random characters at a random place and size, dark on the page or white on a
    coloured plate (as the tasks draw labels, totals and sign words); the image at `side` pixels
    and the characters' indices in `ALPHABET`."""
    image, draw = canvas(rng)
    chars = [rng.choice(ALPHABET) for _ in range(LENGTH)]
    size = rng.randint(26, 42)
    x, y = rng.randint(10, 90), rng.randint(20, 150)
    colour = (20, 20, 20)
    if rng.random() < 0.5:
        plate = COLOURS[rng.choice(sorted(COLOURS))]
        draw.rectangle([x - 8, y - 6, x + 150, y + size + 16], fill=plate)
        colour = (255, 255, 255)
    text(draw, (x, y), "".join(chars), size, colour=colour)
    return image.resize((side, side), Image.Resampling.LANCZOS), [ALPHABET.index(c) for c in chars]


class GlyphReader(nn.Module):
    """The vision side of `vlm` plus a linear head reading every character position from the
    flattened visual tokens (position in the image matters, so no pooling)."""

    def __init__(self, vlm: DiffusionVLM, side: int) -> None:
        super().__init__()
        self.vlm, self.side = vlm, side
        self.vision = vlm.vision_parameters()
        with torch.no_grad():
            tokens = visual_tokens(vlm, [glyph_image(random.Random(0), side)[0]])
        self.head = nn.Linear(tokens[0].numel(), LENGTH * len(ALPHABET))

    def logits(self, images: list[Image.Image]) -> torch.Tensor:
        """`[B, LENGTH, len(ALPHABET)]`."""
        return self.head(visual_tokens(self.vlm, images).flatten(1)).view(len(images), LENGTH, -1)

    def loss(self, batch: list[tuple[Image.Image, list[int]]]) -> torch.Tensor:
        logits = self.logits([image for image, _ in batch])
        targets = torch.tensor([chars for _, chars in batch])
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def trained_parameters(self) -> list[nn.Parameter]:
        return self.vision + list(self.head.parameters())

    @torch.no_grad()
    def accuracy(self, held_out: list[tuple[Image.Image, list[int]]]) -> float:
        """Share of held-out characters read right, in percent."""
        predicted = self.logits([image for image, _ in held_out]).argmax(-1)
        return 100.0 * (predicted == torch.tensor([c for _, c in held_out])).float().mean().item()


def pretrain_glyphs(
    vlm: DiffusionVLM,
    side: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 200,
    held_out: int = 256,
    progress: bool = True,
) -> dict:
    """Train `vlm`'s vision side in place on the reading pretext (constant lr, as measured); returns
    the held-out character accuracy and the training time. With `checkpoint` (a file) the whole
    state is saved there every `checkpoint_every` steps and a rerun continues exactly as the
    uninterrupted run would have."""
    torch.manual_seed(seed)
    reader = GlyphReader(vlm, side)
    optimizer = torch.optim.AdamW(reader.trained_parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    state, done, seconds = resume_checkpoint(checkpoint, optimizer, rng)
    if state:
        vlm.model.load_state_dict(state["model"])
        reader.head.load_state_dict(state["head"])
    started = time.perf_counter() - seconds
    vlm.model.train()
    bar = tqdm(range(done, steps), "glyph pre-training", initial=done, total=steps, disable=not progress)
    for step in bar:
        loss = reader.loss([glyph_image(rng, side) for _ in range(batch_size)])
        optimizer_step(loss, reader.trained_parameters(), optimizer)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            weights = {"model": vlm.model.state_dict(), "head": reader.head.state_dict()}
            save_checkpoint(checkpoint, weights, optimizer, rng, step + 1, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    vlm.model.eval()
    held = [glyph_image(random.Random(HELD_OUT_SEED + k), side) for k in range(held_out)]
    return {"steps": steps, "seconds": seconds, "held_out_char_accuracy": reader.accuracy(held)}
