"""`DiffusionVLM`: a transformers VLM plus what block-diffusion decoding needs, and `load()`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from .decoding import DecodeOptions, Decoder, Session, StepTrace, make_decoder
from .decoding.answer import Answer
from .decoding.batch import Batch
from .detokenize import TextStream
from .errors import ContextLengthError, FastDVLMError, first_line
from .models.family import Family
from .models.mask_token import add_mask_token
from .models.registry import family_of, get_family
from .models.released import open_released, released_kind
from .modes import HF_GENERATE, resolve_mode
from .prompt import ImageLike, Messages, encode_prompt
from .quant import is_fp8_checkpoint, load_quantized
from .settings import DiffusionSettings


@dataclass
class GenerationOutput:
    """One answer and what it cost. `nfe` counts every language-model pass, prefill included."""

    text: str
    token_ids: list[int]  # up to and including the first stop token, nothing after
    nfe: int
    prefill_nfe: int
    seconds: float
    prompt_tokens: int
    mode: str
    trace: list[StepTrace] = field(default_factory=list)  # per decoding step after the prefill

    @property
    def tokens_per_nfe(self) -> float:
        return len(self.token_ids) / max(self.nfe, 1)

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        """JSON-ready: every field plus the derived rates."""
        return asdict(self) | {
            "tokens_per_nfe": self.tokens_per_nfe,
            "tokens_per_second": self.tokens_per_second,
        }


GRAPHS_PER_MODEL = 16  # compiled graphs of one model: 12 measured over every mode and transformers' generate


class DiffusionVLM:
    """A vision-language model that decodes with `ar`, block diffusion or self-speculation.

    Wraps an in-memory transformers model and its processor; adds the `[MASK]` token if the
    tokenizer lacks it and records its id in the config's `fast_dvlm` settings.
    """

    def __init__(
        self, model: PreTrainedModel, processor: ProcessorMixin, family: Family | None = None
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.family = family or family_of(model.config)
        self.settings = DiffusionSettings.from_config(model.config)
        self.settings.mask_token_id = add_mask_token(model, processor.tokenizer)
        self.settings.write_to(model.config)
        self.stop_ids = self._stop_ids()
        self.engine = "lean"  # the default forward path of every answer (DecodeOptions.engine)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    def _stop_ids(self) -> frozenset[int]:
        """The checkpoint's own end tokens (its `generation_config.eos_token_id`, where transformers'
        `generate` stops too); the family's usual ones only where the checkpoint names none."""
        eos = self.model.generation_config.eos_token_id
        if eos is not None and eos != []:
            return frozenset(eos if isinstance(eos, list) else [eos])
        vocab = self.tokenizer.get_vocab()
        return frozenset(vocab[t] for t in self.family.stop_tokens if t in vocab)

    @property
    def default_mode(self) -> str:
        """The mode `mode=None` decodes with, everywhere (API, CLI, chat, server, lmms-eval):
        lossless `spec-linear` for a converted checkpoint, `ar` for a model never converted."""
        return resolve_mode(converted=self.settings.converted)

    @property
    def context_length(self) -> int:
        """The most positions a prompt and its answer may take together."""
        return self.family.text_config(self.model).max_position_embeddings

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Refuse a prompt whose answer could run past the model's positions, where a model gives
        garbage without a word."""
        if prompt_tokens + max_new_tokens > self.context_length:
            raise ContextLengthError(
                f"the prompt is {prompt_tokens} tokens and the answer cap allows {max_new_tokens} more, "
                f"{prompt_tokens + max_new_tokens} in all, over this model's context length of "
                f"{self.context_length} tokens: shorten the prompt or lower the answer cap "
                "(max_new_tokens; max_tokens in a chat request)"
            )

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> DiffusionVLM:
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FastDVLMError(
                f"{path} is not a model directory: no config.json (expected a Hugging Face checkpoint "
                "saved with save_pretrained)"
            )
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise FastDVLMError(f"{config_file} is not valid JSON: {exc}") from None
        if released_kind(config):
            return open_released(path, config, dtype)
        family = get_family(config.get("model_type") or "<missing model_type>")
        if is_fp8_checkpoint(config):  # FP8 weights: emulated FP8 linear layers, on any device
            return load_quantized(path, family, dtype)
        try:
            model = family.model_class.from_pretrained(path, dtype=dtype, local_files_only=True)
            processor = family.load_processor(path)
        except (OSError, ValueError, KeyError) as exc:
            raise FastDVLMError(f"cannot load the checkpoint in {path}: {first_line(exc)}") from exc
        return cls(model, processor, family)

    def vision_modules(self) -> list[nn.Module]:
        """The vision side, tower and projector, whatever the family: every part of the model but the
        language model (what vision pre-training trains and `freeze_vision` keeps). Empty for a
        text-only model, whose parts are all the language model's. (A parameter held by `model.model`
        itself, outside its parts, is not counted: no supported family has one.)"""
        parts = dict(self.model.model.named_children())
        if "language_model" not in parts:
            return []
        return [part for name, part in parts.items() if name != "language_model"]

    def vision_parameters(self) -> list[nn.Parameter]:
        """The parameters of `vision_modules()`."""
        return [p for part in self.vision_modules() for p in part.parameters()]

    def save_pretrained(self, path: str | Path) -> None:
        """Write a checkpoint that plain `transformers.from_pretrained` and `fast_dvlm.load` both open."""
        self.settings.write_to(self.model.config)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def compile(self, **options: Any) -> DiffusionVLM:
        """Compile the language model's forward with `torch.compile`, in place (opt-in); returns self.

        Pays where per-layer Python is a large share of a pass (small models, short passes). Shapes
        are dynamic from the start, since pass and cache lengths change with every pass; the cache's
        first use, 1-token vs multi-token passes, mask vs no mask and strided (rolled-back) caches
        still make a dozen graphs over all modes, compiled during the first answers of each mode.
        They all count against dynamo's recompile limit (8 by default), which every compiled model
        shares (they enter through the same transformers code), so each call raises it: past it,
        dynamo quietly runs eager. `options` go to `torch.compile` (e.g. `backend`, `mode`).
        The compiled forward is transformers', so answers then run on that engine instead of the
        lean loop (which is about as fast on the demo without any compiling: README, speed section).
        """
        self.engine = "transformers"
        torch._dynamo.config.recompile_limit += GRAPHS_PER_MODEL
        self.family.language_model(self.model).compile(**({"dynamic": True} | options))
        return self

    def decode_options(
        self,
        max_new_tokens: int,
        block_size: int | None,
        sub_block_size: int | None,
        threshold: float | None,
        draft_policy: str = "auto",
        engine: str | None = None,
    ) -> DecodeOptions:
        s = self.settings
        block_size = s.block_size if block_size is None else block_size
        if sub_block_size is None:  # the model's default where it fits, else the largest that does
            sub_block_size = math.gcd(s.sub_block_size, block_size) or 1
        return DecodeOptions(
            max_new_tokens=max_new_tokens,
            stop_ids=self.stop_ids,
            mask_id=s.mask_token_id,
            block_size=block_size,
            sub_block_size=sub_block_size,
            threshold=threshold if threshold is not None else s.threshold,
            clean_attention=s.clean_attention,
            draft_policy=draft_policy,
            engine=engine or self.engine,
        )

    def make_decoder(self, mode: str | None, options: DecodeOptions) -> Decoder:
        """The decoder of `mode` (None: the model's default) with `options`; it holds no answer's
        state, so one serves every answer decoded with these options."""
        return make_decoder(resolve_mode(mode, converted=self.settings.converted), options)

    def encode(
        self, prompt: str | Messages, images: Sequence[ImageLike] | None, options: DecodeOptions
    ) -> BatchFeature:
        """The processor's tensors of `prompt` and `images`, checked against the context length."""
        batch = encode_prompt(self.processor, prompt, images)
        self.check_context(batch["input_ids"].shape[1], options.max_new_tokens)
        return batch

    def start(
        self, decoder: Decoder, batch: BatchFeature, use_cache: bool = True, into: Batch | None = None
    ) -> Answer:
        """Prefill the encoded prompt and return its answer, ready to decode: alone
        (`answer.stream()`), or joined to the batch `into`, whose next free row it takes."""
        batch = batch.to(self.model.device)
        options = decoder.options
        if into is None:
            session = Session(self.model, self.family, use_cache, options.clean_attention, options.engine)
        else:
            session = into.session(options.clean_attention)
        first_logits = session.prefill(
            self.family.embed(self.model, batch), batch["input_ids"][0], self.aligned_block(decoder)
        )
        answer = Answer(decoder, session, first_logits)
        if into is not None:
            into.join(answer)
        return answer

    def start_many(
        self, decoders: Sequence[Decoder], batches: Sequence[BatchFeature], into: Batch
    ) -> list[Answer]:
        """`start` for several encoded prompts (`batches[k]` decoded by `decoders[k]`) joining the
        batch `into` together: one vision-tower call for all their images (`Family.embed_many`) and
        one padded prompt pass over their rows (`Batch.prefill`); each answer as `start` gives it
        alone. Returned in the order of `batches`."""
        batches = [b.to(self.model.device) for b in batches]
        sessions = [into.session(d.options.clean_attention, k) for k, d in enumerate(decoders)]
        first_logits = into.prefill(
            sessions,
            self.family.embed_many(self.model, batches),
            [b["input_ids"][0] for b in batches],
            [self.aligned_block(d) for d in decoders],
        )
        answers = [Answer(d, s, f) for d, s, f in zip(decoders, sessions, first_logits, strict=True)]
        into.join_many(answers)
        return answers

    def aligned_block(self, decoder: Decoder) -> int | None:
        """The block size prompts are aligned to for `decoder` (`Session.prefill`); None: not aligned."""
        absolute = self.settings.block_alignment == "absolute" and decoder.name != "ar"
        return decoder.options.block_size if absolute else None

    def output(self, answer: Answer, seconds: float) -> GenerationOutput:
        """A decoded answer as a `GenerationOutput`."""
        session = answer.session
        return GenerationOutput(
            text=self.tokenizer.decode(session.tokens, skip_special_tokens=True),
            token_ids=list(session.tokens),
            nfe=session.nfe,
            prefill_nfe=session.prefill_nfe,
            seconds=seconds,
            prompt_tokens=session.prompt_len,
            mode=answer.decoder.name,
            trace=list(answer.state.trace),
        )

    @torch.inference_mode()
    def stream(
        self,
        prompt: str | Messages,
        images: Sequence[ImageLike] | None = None,
        mode: str | None = None,
        max_new_tokens: int = 128,
        block_size: int | None = None,
        sub_block_size: int | None = None,
        threshold: float | None = None,
    ) -> Iterator[list[int]]:
        """Yield the answer's token ids chunk by chunk, as each decoding step commits them (the last
        chunk ends with the stop token, as `GenerationOutput.token_ids` does)."""
        options = self.decode_options(max_new_tokens, block_size, sub_block_size, threshold)
        decoder = self.make_decoder(mode, options)
        yield from self.start(decoder, self.encode(prompt, images, options)).stream()

    def stream_text(
        self,
        prompt: str | Messages,
        images: Sequence[ImageLike] | None = None,
        mode: str | None = None,
        max_new_tokens: int = 128,
        block_size: int | None = None,
        sub_block_size: int | None = None,
        threshold: float | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece as blocks are committed; the pieces join to
        `generate(...).text` (no special tokens, no half characters), as the server streams it."""
        text = TextStream(self.tokenizer)
        chunks = self.stream(prompt, images, mode, max_new_tokens, block_size, sub_block_size, threshold)
        for chunk in chunks:
            if piece := text.push(chunk):
                yield piece
        if piece := text.flush():
            yield piece

    @torch.inference_mode()
    def generate(
        self,
        prompt: str | Messages,
        images: Sequence[ImageLike] | None = None,
        mode: str | None = None,
        max_new_tokens: int = 128,
        block_size: int | None = None,
        sub_block_size: int | None = None,
        threshold: float | None = None,
        *,
        use_cache: bool = True,
        draft_policy: str = "auto",
        engine: str | None = None,
    ) -> GenerationOutput:
        """Answer `prompt` (a string, or chat messages) about `images` with decoding algorithm `mode`
        (None: the model's `default_mode`).

        `draft_policy` ("auto" or "fixed") and `engine` ("lean" or "transformers"; None: the model's,
        lean unless `compile()` was called) change the speed of the speculative modes and of every
        mode, never the answer: `decoding/policy.py`, `decoding/lean.py`.

        `use_cache=False` recomputes the whole prefix on every pass instead of reading a KV cache:
        slow, and there to check that the cache holds exactly what a fresh pass would compute.
        """
        start = time.perf_counter()
        options = self.decode_options(
            max_new_tokens, block_size, sub_block_size, threshold, draft_policy, engine
        )
        decoder = self.make_decoder(mode, options)
        answer = self.start(decoder, self.encode(prompt, images, options), use_cache)
        for _ in answer.stream():
            pass
        return self.output(answer, time.perf_counter() - start)

    @torch.inference_mode()
    def generate_batch(
        self,
        prompts: Sequence[str | Messages],
        images: Sequence[Sequence[ImageLike] | None] | None = None,
        mode: str | None = None,
        max_new_tokens: int = 128,
        block_size: int | None = None,
        sub_block_size: int | None = None,
        threshold: float | None = None,
        *,
        max_batch_size: int | None = None,
        use_cache: bool = True,
        draft_policy: str = "auto",
        engine: str | None = None,
    ) -> list[GenerationOutput]:
        """Answer many prompts together, each about its own images (`images[i]`, a list, possibly
        empty), in one batched forward pass per decoding round (decoding/batch.py); the answers in
        the order of `prompts`.

        Each answer is the one `generate` gives for its prompt alone: token for token in `ar` and
        the speculative modes; in `diffusion` up to float rounding at a confidence near τ. Its `nfe`
        counts the passes it took part in, its `seconds` run from its prefill to its last token. At
        most `max_batch_size` answers (None: all) decode at once; as one completes, the next prompt
        joins. Every prompt is encoded and checked before any decoding starts.
        """
        if images is None:
            images = [None] * len(prompts)
        if len(images) != len(prompts):
            raise FastDVLMError(
                f"images must hold one list per prompt: {len(prompts)} prompts, {len(images)} image lists"
            )
        if max_batch_size is not None and max_batch_size < 1:
            raise FastDVLMError(f"max_batch_size must be at least 1, got {max_batch_size}")
        options = self.decode_options(
            max_new_tokens, block_size, sub_block_size, threshold, draft_policy, engine
        )
        decoder = self.make_decoder(mode, options)
        encoded = [self.encode(p, i, options) for p, i in zip(prompts, images, strict=True)]
        batch = Batch(self.model, self.family, use_cache, options.engine)
        size = max_batch_size or max(len(prompts), 1)
        waiting, started, outputs = list(range(len(prompts)))[::-1], {}, [None] * len(prompts)
        while waiting or len(batch):
            joining = [waiting.pop() for _ in range(min(len(waiting), size - len(batch)))]
            if joining:
                answers = self.start_many([decoder] * len(joining), [encoded[i] for i in joining], batch)
                began = time.perf_counter()
                for index, answer in zip(joining, answers, strict=True):
                    started[id(answer)] = (index, began)
            for answer, _ in batch.round():
                if answer.done:
                    index, began = started.pop(id(answer))
                    outputs[index] = self.output(answer, time.perf_counter() - began)
        return outputs

    @torch.inference_mode()
    def hf_generate(
        self, prompt: str | Messages, images: Sequence[ImageLike] | None = None, max_new_tokens: int = 128
    ) -> GenerationOutput:
        """The reference: transformers' own greedy `generate` on the same prompt (one pass per token)."""
        start = time.perf_counter()
        batch = encode_prompt(self.processor, prompt, images).to(self.model.device)
        out = self.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(self.stop_ids)
        )
        tokens = out[0, batch["input_ids"].shape[1] :].tolist()
        return GenerationOutput(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            token_ids=tokens,
            nfe=len(tokens),
            prefill_nfe=1,
            seconds=time.perf_counter() - start,
            prompt_tokens=batch["input_ids"].shape[1],
            mode=HF_GENERATE,
        )


SHIPPED = {"demo": "demo", "demo-ar": "demo-ar"}  # names of the checkpoints in the package's assets


def load(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> DiffusionVLM:
    """Open a local checkpoint directory; `demo` / `demo-ar` for the shipped demo models (converted /
    its AR base); `tiny:<family>` for a random tiny model built on the spot."""
    name = str(name_or_path)
    if name in SHIPPED:
        path = Path(__file__).resolve().parent / "assets" / SHIPPED[name]
        if not (path / "config.json").is_file():
            raise FastDVLMError(
                f"the {name} model is not in this installation: build it with `fast-dvlm make-demo`"
            )
        return DiffusionVLM.from_pretrained(path, dtype=dtype)
    if name.startswith("tiny:"):
        from .models.tiny import build_tiny_model

        model, processor = build_tiny_model(name.removeprefix("tiny:"))
        return DiffusionVLM(model.to(dtype), processor)
    return DiffusionVLM.from_pretrained(name_or_path, dtype=dtype)
