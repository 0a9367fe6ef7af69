"""fast-dvlm as an lmms-eval model: `lmms-eval --model fast_dvlm --model_args pretrained=PATH,mode=MODE`.

lmms-eval finds the model through the `lmms_eval.models` entry point, which names `manifest`.
Answers are decoded `batch_size` requests at a time (`generate_batch`; lmms-eval's `--batch_size`,
1 by default) with any of our decoding modes, always greedily (the modes are greedy by construction;
a task's sampling settings are ignored). `loglikelihood` reads the
causal stream, the token-level causal pass AR decoding runs, so it does not depend on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from ..decoding import Session, make_decoder
from ..errors import FastDVLMError
from ..modes import resolve_mode
from ..prompt import encode_prompt
from ..vlm import load

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest


def manifest() -> ModelManifest:
    """The entry point's payload. Imported when called, not with this module: importing
    `lmms_eval.models` loads every entry point, this one included, so a module-level import would be
    circular whenever this module is imported first."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="fast_dvlm", simple_class_path=f"{__name__}.FastDVLM")


class FastDVLM(lmms):
    """A block-diffusion VLM answering lmms-eval requests.

    `--model_args`: `pretrained` (a checkpoint directory, `demo` or `tiny:FAMILY`), `mode` (`ar`,
    `diffusion`, `spec-linear`, `spec-quadratic`; the checkpoint's `default_mode` when left out),
    `block_size`, `sub_block_size`, `threshold` (the checkpoint's own settings when left out) and
    `max_new_tokens` (used where a task sets none).
    """

    def __init__(
        self,
        pretrained: str = "demo",
        mode: str | None = None,
        block_size: int | None = None,
        sub_block_size: int | None = None,
        threshold: float | None = None,
        max_new_tokens: int = 128,
        batch_size: int | str = 1,  # requests decoded together; "auto": AUTO_BATCH_SIZE
        # lmms-eval passes these to every model; decoding runs on the CPU
        max_batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        if device not in (None, "cpu"):
            raise FastDVLMError(f"fast_dvlm decodes on the CPU only; got --device {device}")
        self.vlm = load(str(pretrained))
        self.mode = resolve_mode(mode, converted=self.vlm.settings.converted)
        self.settings = {"block_size": block_size, "sub_block_size": sub_block_size, "threshold": threshold}
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_count(batch_size)
        # a bad mode or block setting fails here, before lmms-eval loads any task
        make_decoder(self.mode, self.vlm.decode_options(max_new_tokens, **self.settings))

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order, decoded `batch_size` at a time among requests of the same cap."""
        by_cap: dict[int, list[int]] = {}
        for k, request in enumerate(requests):
            cap = request.args[1].get("max_new_tokens", self.max_new_tokens)
            by_cap.setdefault(cap, []).append(k)
        answers: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), desc="fast_dvlm answering", disable=self.rank != 0)
        for cap, indices in by_cap.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts, images = [], []
                for k in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[k].args
                    prompts.append(prompt_text(context))
                    images.append(self.images(doc_to_visual, task, split, doc_id))
                outs = self.vlm.generate_batch(prompts, images, self.mode, cap, **self.settings)
                for k, out in zip(batch, outs, strict=True):
                    answers[k] = cut_at_stop_strings(out.text, requests[k].args[1].get("until"))
                progress.update(len(batch))
        progress.close()
        return answers

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="fast_dvlm scoring", disable=self.rank != 0):
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            images = self.images(doc_to_visual, task, split, doc_id)
            results.append(self.continuation_logprob(prompt_text(context), images, continuation))
        return results

    def continuation_logprob(
        self, prompt: str, images: list[Image.Image], continuation: str
    ) -> tuple[float, bool]:
        """The summed log-probability of `continuation`'s tokens as the answer to `prompt`, and whether
        greedy decoding would produce exactly those tokens."""
        vlm = self.vlm
        ids = torch.tensor(vlm.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        batch = encode_prompt(vlm.processor, prompt, images)
        session = Session(vlm.model, vlm.family)
        rows = [session.prefill(vlm.family.embed(vlm.model, batch))[None]]  # [1, V]: the first token's
        if len(ids) > 1:  # the continuation's own tokens, causally over the prompt's cache
            start = session.cache_len
            rows.append(session.forward(ids[:-1], torch.arange(start, start + len(ids) - 1)))
        logits = torch.cat(rows).float()  # [n, V]: row j predicts continuation token j
        logprob = logits.log_softmax(-1).gather(1, ids[:, None]).sum()
        return float(logprob), bool(torch.equal(logits.argmax(-1), ids))

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise FastDVLMError("fast_dvlm does not run multi-round tasks")

    def images(self, doc_to_visual: Callable, task: str, split: str, doc_id: int) -> list[Image.Image]:
        return doc_to_visual(self.task_dict[task][split][doc_id]) or []


AUTO_BATCH_SIZE = 8  # lmms-eval's batch_size=auto: the server's default batch


def batch_count(batch_size: int | str) -> int:
    """lmms-eval's `batch_size` (an int, its digits, or "auto") as a number of requests."""
    if str(batch_size) == "auto":
        return AUTO_BATCH_SIZE
    try:
        count = int(batch_size)
    except ValueError:
        count = 0
    if count < 1:
        raise FastDVLMError(f"batch_size must be a positive integer or auto, got {batch_size!r}")
    return count


def prompt_text(context: str) -> str:
    """The task's prompt without `<image>` placeholders: our prompts put the images first."""
    return context.replace("<image>", "").strip()


def cut_at_stop_strings(text: str, until: str | list[str] | None) -> str:
    """The answer up to the first of the task's stop strings, as lmms-eval's own models cut it."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop)[0]
    return text
