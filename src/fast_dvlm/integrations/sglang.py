"""Serve a fast-dvlm checkpoint with SGLang's diffusion-LLM engine (CUDA only).

Written against **sglang==0.5.23** (`pip install 'fast-dvlm[sglang]'` on a CUDA machine), from its
source: `srt/dllm/config.py` (the architecture table: block size and mask id), `srt/dllm/algorithm/`
(`DllmAlgorithm`: the base owns the loop, an algorithm implements `step` on full logits; separate
context encoding), `srt/plugins` (general plugins, entry-point group `sglang.srt.plugins`, run in
every SGLang process before it reads its arguments) and `srt/models/qwen2_5_vl.py`.

`register` is that plugin (declared in pyproject.toml): it teaches SGLang fast-dvlm checkpoints'
block size and mask id, adds the `FastDVLMDiffusion` algorithm and a Qwen2.5-VL class that returns
full logits. FP8 checkpoints from `fast-dvlm quantize` need nothing more: SGLang reads their
compressed-tensors `quantization_config` itself. On a GPU:

    fast-dvlm quantize --model runs/my-model --scheme fp8-w8a8 --out runs/my-model-fp8  # or --emulate, on CPU
    python -m sglang.launch_server --model-path runs/my-model-fp8 --dllm-algorithm FastDVLMDiffusion

(`sglang_command` builds that line.) Not registered: the self-speculative modes. They need a causal
pass that returns full logits inside a block step, which SGLang 0.5.23's dLLM runner lacks (its
canvas passes are bidirectional, its causal passes return last-token logits only).

What has run, on CPU: the canvas logic (`sglang_canvas`), in tests; and, in `tests/test_sglang.py`
whenever SGLang is installed, `register` against the real 0.5.23 wheel with nothing stubbed. Serving
needs CUDA, but SGLang's Python imports on CPU in a venv beside the project's packages:

    python -m venv --system-site-packages V
    V/bin/pip install --no-deps sglang==0.5.23 pybase64 msgspec pyzmq apache-tvm-ffi gguf partial_json_parser

There SGLang's own `load_plugins` finds and runs this plugin, `get_algorithm_cls` and the model
registry resolve its entries, the hooked `DllmConfig` reads block size and mask id from a converted
(FP8) checkpoint, also through SGLang's launch-time argument resolution (`--device cpu`), and
`sglang_command`'s flags parse with SGLang's own parser. Once, by hand (GPU-only imports stubbed),
0.5.23's `DllmAlgorithm.run` (sync and FDFO) driving `FastDVLMDiffusion` with canvas passes computed
by fast-dvlm reproduced the engine's `diffusion` tokens. Never run: a GPU server, the model class's
forward, attention and M-RoPE positions on SGLang's canvas.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import FastDVLMError

SGLANG_VERSION = "0.5.23"
SGLANG_ALGORITHMS = {"diffusion": "FastDVLMDiffusion"}  # fast-dvlm mode -> SGLang --dllm-algorithm


def register() -> None:
    """The SGLang plugin: hooks `DllmConfig`, adds fast-dvlm's algorithms and the Qwen2.5-VL class.

    SGLang applies the hook right after its plugins run; to use this outside `load_plugins`, call
    `HookRegistry.apply_hooks()` afterwards.
    """
    from sglang.srt.dllm.algorithm import algo_name_to_cls
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from .sglang_dllm import ALGORITHMS, ARCHITECTURE, Qwen2_5_VLForConditionalGeneration, dllm_config

    HookRegistry.register("sglang.srt.dllm.config.DllmConfig.from_server_args", dllm_config, HookType.AROUND)
    algo_name_to_cls.update({cls.__name__: cls for cls in ALGORITHMS})
    ModelRegistry.models[ARCHITECTURE] = Qwen2_5_VLForConditionalGeneration


def sglang_command(
    model: str | Path,
    mode: str = "diffusion",
    host: str = "127.0.0.1",
    port: int = 30000,
    algorithm_config: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that serves `model` with SGLang and fast-dvlm's algorithm for `mode`.

    `algorithm_config`: a YAML file overriding the checkpoint's `threshold`, `sub_block_size` or
    `block_size`; `extra_args` go to SGLang as they are (e.g. `--tp-size 2`).
    """
    if mode not in SGLANG_ALGORITHMS:
        raise FastDVLMError(
            f"mode {mode!r} has no SGLang algorithm; with SGLang {SGLANG_VERSION} fast-dvlm serves: "
            + ", ".join(SGLANG_ALGORITHMS)
        )
    command = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model)]
    command += ["--dllm-algorithm", SGLANG_ALGORITHMS[mode], "--host", host, "--port", str(port)]
    if algorithm_config is not None:
        command += ["--dllm-algorithm-config", str(algorithm_config)]
    return command + list(extra_args)
