"""The SGLang side of the integration (imports SGLang; written against sglang==0.5.23, see `sglang.py`).

Three pieces, each as small as SGLang's dLLM support allows:
- `dllm_config`: SGLang's `DllmConfig.from_server_args` knows block size and mask id only for the
  architectures in its own table; this hook answers for any checkpoint carrying fast-dvlm settings.
- `FastDVLMDiffusion`: the τ-threshold block-diffusion algorithm, its per-request logic in
  `sglang_canvas` (the engine's own unmasking rule).
- `Qwen2_5_VLForConditionalGeneration`: SGLang's Qwen2.5-VL, plus, for fast-dvlm checkpoints only,
  full logits on canvas passes and each request's seed from its causal context pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import yaml
from sglang.srt.arg_groups.overrides import resolving_view
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.dllm.algorithm import get_algorithm_cls
from sglang.srt.dllm.algorithm.base import DllmAlgorithm
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.models import qwen2_5_vl

from ..settings import DiffusionSettings
from .sglang_canvas import canvas_decoder, denoise_step, start_canvas

if TYPE_CHECKING:
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner
    from sglang.srt.server_args import ServerArgs

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


class FastDVLMDiffusion(DllmAlgorithm):
    """fast-dvlm's τ-threshold block diffusion on SGLang's canvas.

    Separate context encoding gives Fast-dVLM's token-causal KV cache: committed tokens are encoded
    causally, the canvas's bidirectional keys are discarded. The whole canvas, seed included, is new
    output.
    """

    supported_architectures = (ARCHITECTURE,)
    requires_separate_context_encoding = True

    def __init__(self, config: DllmConfig) -> None:
        super().__init__(config)
        self.decoder = canvas_decoder(config.mask_id, config.block_size, config.algorithm_config)

    def _block_start_list(self, forward_batch: ForwardBatch) -> list[int]:
        """Where each canvas's new tokens start: at 0, the seed is new output too."""
        return [0] * forward_batch.batch_size  # no committed tokens on the canvas

    def prepare_inputs(
        self, model_runner: ModelRunner, forward_batch: ForwardBatch, states: list[Any]
    ) -> None:
        """A request's first pass: write `[seed, MASK x (B-1)]` over SGLang's placeholder canvas."""
        canvases = forward_batch.input_ids.view(-1, self.block_size)
        for i, rid in enumerate(forward_batch.rids):
            if states[i] is None:
                seed = model_runner.model.fast_dvlm_seeds.pop(rid)
                canvas, states[i] = start_canvas(seed, self.decoder, canvases.device)
                canvases[i].copy_(canvas)

    def step(self, forward_batch: ForwardBatch, full_logits: torch.Tensor, states: list[Any]) -> list[bool]:
        """One bidirectional pass's unmasking on every canvas; True where nothing is masked any more."""
        canvases = forward_batch.input_ids.view(-1, self.block_size)  # in place: SGLang feeds it back
        logits = full_logits.view(canvases.shape[0], self.block_size, -1)
        return [denoise_step(self.decoder, canvases[i], states[i], logits[i]) for i in range(len(states))]


ALGORITHMS = (FastDVLMDiffusion,)  # by name in sglang.SGLANG_ALGORITHMS


def dllm_config(
    original: Callable[[ServerArgs], DllmConfig | None], server_args: ServerArgs
) -> DllmConfig | None:
    """`DllmConfig.from_server_args`, also for fast-dvlm checkpoints (an AROUND hook on it)."""
    cfg = resolving_view(server_args)
    if cfg.dllm_algorithm is None:
        return original(server_args)
    model_config = ModelConfig.from_server_args(
        server_args, model_path=cfg.model_path, model_revision=cfg.revision
    )
    settings = DiffusionSettings.from_config(model_config.hf_config)
    if settings.mask_token_id is None:  # not a fast-dvlm checkpoint
        return original(server_args)
    algorithm = get_algorithm_cls(cfg.dllm_algorithm)
    if algorithm not in ALGORITHMS:
        names = ", ".join(a.__name__ for a in ALGORITHMS)
        raise ValueError(
            f"fast-dvlm checkpoints decode with --dllm-algorithm {names}, not {cfg.dllm_algorithm}"
        )
    algorithm_config = {"sub_block_size": settings.sub_block_size, "threshold": settings.threshold}
    if cfg.dllm_algorithm_config is not None:
        with open(cfg.dllm_algorithm_config) as f:
            overrides = yaml.safe_load(f) or {}
        if not isinstance(overrides, dict):
            raise ValueError("The dLLM algorithm config must be a YAML mapping")  # as SGLang says it
        algorithm_config |= overrides
    return DllmConfig(
        algorithm=cfg.dllm_algorithm,
        algorithm_config=algorithm_config,
        block_size=algorithm_config.get("block_size", settings.block_size),
        mask_id=settings.mask_token_id,
        max_running_requests=cfg.max_running_requests or 1,
        first_done_first_out_mode=cfg.dllm_fdfo,
        requires_separate_context_encoding=algorithm.requires_separate_context_encoding,
    )


class Qwen2_5_VLForConditionalGeneration(qwen2_5_vl.Qwen2_5_VLForConditionalGeneration):
    """SGLang's Qwen2.5-VL under its own name (so SGLang's multimodal processor and architecture
    lists apply); unchanged unless the checkpoint carries fast-dvlm settings."""

    def __init__(self, config: Any, quant_config: Any = None, prefix: str = "") -> None:
        super().__init__(config, quant_config=quant_config, prefix=prefix)
        self.is_fast_dvlm = DiffusionSettings.from_config(config).mask_token_id is not None
        self.fast_dvlm_seeds: dict[str, int] = {}  # request id -> next-token prediction of its context pass
        if self.is_fast_dvlm:
            self.logits_processor.return_full_logits = True  # read on canvas (DLLM_EXTEND) passes only

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """SGLang's forward; on a fast-dvlm context (causal extend) pass, also keep each request's seed."""
        out = super().forward(input_ids, positions, forward_batch, *args, **kwargs)
        mode = forward_batch.forward_mode
        logits = getattr(out, "next_token_logits", None)
        if self.is_fast_dvlm and mode.is_extend() and not mode.is_dllm_extend() and logits is not None:
            self.fast_dvlm_seeds.update(zip(forward_batch.rids, logits.argmax(-1).tolist(), strict=True))
        return out
