"""Stage 0 of the demo recipe: pre-train the vision tower before the language model reads it.

Real VLMs start from a pre-trained tower (CLIP, SigLIP). A tower trained from scratch only through
the language model barely learns on a CPU budget: the young LM attends diffusely to the visual
tokens, so the tower gets almost no useful gradient (measured on this machine: the handwritten-digit
task stays at chance after 1000 AR steps, while the same tower under a direct classifier reaches 80%
in 200). So the tower first learns under a small visual-question classifier: a bag of the question's
tokens gates the flattened visual tokens, and an MLP predicts the answer key. The head is then
discarded; only the tower's weights go on to AR training.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm
from transformers import get_scheduler

from ..errors import FastDVLMError
from ..eval.accuracy import Item, read_items
from ..vlm import DiffusionVLM


class KeyClassifier(nn.Module):
    """Answer key from (visual tokens, question): a gated bag-of-words VQA head."""

    def __init__(self, vocab_size: int, visual_tokens: int, feature_dim: int, classes: int, width: int = 256):
        super().__init__()
        self.question = nn.EmbeddingBag(vocab_size, width, mode="mean")
        self.image = nn.Linear(visual_tokens * feature_dim, width)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, classes))

    def forward(self, features: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.out(self.image(features.flatten(1)) * self.question(ids, offsets))


class VisionPretrainer:
    """The tower of `vlm` (a Qwen-VL family model) plus a `KeyClassifier` over the labels of `items`."""

    def __init__(self, vlm: DiffusionVLM, items: list[Item]) -> None:
        self.vlm = vlm
        self.tower = vlm.model.model.visual
        self.labels = sorted({label(item) for item in items})
        self.index = {name: k for k, name in enumerate(self.labels)}
        with torch.no_grad():
            probe = self.features([items[0]])
        vocab, (_, tokens, dim) = len(vlm.processor.tokenizer), probe.shape
        self.head = KeyClassifier(vocab, tokens, dim, len(self.labels))

    def features(self, items: list[Item]) -> torch.Tensor:
        """Visual tokens `[B, N, D]` after the tower's merger; every image must give the same N."""
        images = [Image.open(item.image).convert("RGB") for item in items]
        pixels = self.vlm.processor.image_processor(images=images, return_tensors="pt")
        out = self.vlm.model.model.get_image_features(
            pixels["pixel_values"], pixels["image_grid_thw"], return_dict=True
        )
        if len({f.shape[0] for f in out.pooler_output}) != 1:
            raise FastDVLMError("vision pre-training needs images of one size (one number of visual tokens)")
        return torch.stack(list(out.pooler_output))

    def logits(self, items: list[Item]) -> torch.Tensor:
        tokenised = self.vlm.processor.tokenizer([item.question for item in items])["input_ids"]
        ids = torch.tensor([t for row in tokenised for t in row])
        offsets = torch.tensor([0] + [len(row) for row in tokenised[:-1]]).cumsum(0)
        return self.head(self.features(items), ids, offsets)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.tower.parameters()) + list(self.head.parameters())

    @torch.no_grad()
    def accuracy(self, items: list[Item], batch_size: int = 64) -> dict[str, float]:
        """Per-task accuracy of the head (an answer key never seen in training counts as wrong)."""
        hits: dict[str, list[bool]] = defaultdict(list)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            predicted = self.logits(chunk).argmax(-1).tolist()
            for item, k in zip(chunk, predicted, strict=True):
                hits[item.task].append(self.labels[k] == label(item))
        return {task: 100.0 * sum(v) / len(v) for task, v in sorted(hits.items())}


def label(item: Item) -> str:
    return f"{item.task}:{item.key}"


def pretrain_vision(
    vlm: DiffusionVLM,
    train_file: str | Path,
    val_file: str | Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train `vlm`'s vision tower in place; returns the head's validation accuracy and the time taken."""
    items = read_items(train_file)
    trainer = VisionPretrainer(vlm, items)
    vlm.model.train()
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, steps // 20, steps)
    rng = random.Random(seed)
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="vision pre-training", disable=not progress)
    for _ in bar:
        batch = rng.sample(items, batch_size)
        targets = torch.tensor([trainer.index[label(item)] for item in batch])
        loss = nn.functional.cross_entropy(trainer.logits(batch), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    vlm.model.eval()
    val = trainer.accuracy(read_items(val_file))
    return {"steps": steps, "seconds": time.perf_counter() - started, "val_accuracy": val}
