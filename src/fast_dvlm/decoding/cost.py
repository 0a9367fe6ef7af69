"""What one forward pass costs on this machine, for this model: the pass-cost model the drafting
policy reads.

`PassCost.of(session)` is the wall time of an n-token pass over a cache of `CONTEXT` positions, for n
in `SIZES` (interpolated between them, extrapolated linearly past the last), each the median of
`REPEATS` timed passes after a warm-up. It is measured once per machine and model shape, kept on
disk under `$FAST_DVLM_CACHE_DIR` (default `~/.cache/fast_dvlm`) as `pass_cost/<key>.json`, and kept
in memory for the process. The key names the machine (CPU model, device, torch threads) and the
model's shape (text config, layer kinds, dtype, device, engine), not its weights, which do not change
the cost.
Refresh with `PassCost.of(session, refresh=True)` or by deleting the file; measuring takes
`len(SIZES) * (REPEATS + 1)` passes (well under a second on the demo model).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..models.family import Family
from .session import Session

SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
CONTEXT = 64  # cached positions the passes run over: about a prompt's length on the demo
REPEATS = 5


@dataclass(frozen=True)
class PassCost:
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]  # the median cost of a pass of sizes[i] tokens
    key: str = ""

    def __call__(self, n: int) -> float:
        """Seconds for an n-token pass: piecewise-linear between the measured sizes."""
        sizes, seconds = self.sizes, self.seconds
        if n <= sizes[0]:
            return seconds[0]
        for k in range(1, len(sizes)):
            if n <= sizes[k] or k == len(sizes) - 1:
                a, b = sizes[k - 1], sizes[k]
                return seconds[k - 1] + (seconds[k] - seconds[k - 1]) * (n - a) / (b - a)
        raise AssertionError("unreachable")

    def shared(self, rows: int) -> Callable[[int], float]:
        """One answer's share of an n-token pass when `rows` answers' passes run as one batched pass
        (`generate_batch`, the server): a pass of rows x n tokens, split evenly. Where a 1-token
        pass is mostly fixed overhead, batching makes it cheap per answer and a long draft dear."""
        if rows <= 1:
            return self
        return lambda n: self(rows * n) / rows

    @classmethod
    def of(cls, session: Session, refresh: bool = False) -> PassCost:
        """This machine's cost curve for `session`'s model: from memory, disk, or measured now."""
        key = cost_key(session)
        if not refresh and key in _MEMORY:
            return _MEMORY[key]
        path = cache_dir() / "pass_cost" / f"{key}.json"
        cost = None
        if not refresh and path.is_file():
            try:
                data = json.loads(path.read_text())
                cost = cls(tuple(data["sizes"]), tuple(data["seconds"]), key)
            except (ValueError, KeyError, TypeError):
                cost = None  # a damaged file is measured again
        if cost is None:
            cost = cls(SIZES, measure(session), key)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(asdict(cost) | {"machine": machine()}, indent=1))
            except OSError:
                pass  # a read-only home: the measurement still serves this process
        _MEMORY[key] = cost
        return cost


_MEMORY: dict[str, PassCost] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("FAST_DVLM_CACHE_DIR") or Path.home() / ".cache" / "fast_dvlm")


def machine() -> str:
    """The hardware a cost was measured on, in words."""
    return f"{hardware()}; {torch.get_num_threads()} threads{gpu_name()}"


@functools.cache
def hardware() -> str:
    """The CPU model and count (read once: `cost_key` is asked on every speculative step)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cpus"


@functools.cache
def gpu_name() -> str:
    return f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""


def cost_key(session: Session) -> str:
    config = session.text_model.config
    memo = (id(config), str(session.device), str(session.dtype), session.lean is not None, machine())
    if (known := _KEYS.get(memo)) is not None and known[0] is config:
        return known[1]
    shape = {
        k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool, list)) or v is None
    }
    # the layer kinds tell apart models of one shape whose passes cost differently (FP8-emulated linears)
    kinds = sorted({type(module).__name__ for module in session.text_model.modules()})
    text = json.dumps([machine(), memo[1], memo[2], memo[3], shape, kinds], sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    _KEYS[memo] = (config, key)
    return key


_KEYS: dict[tuple, tuple[object, str]] = {}  # the key per config object and machine state


def measure(session: Session) -> tuple[float, ...]:
    """Median seconds of an n-token causal pass over `CONTEXT` cached positions, for n in SIZES. The
    session is left as it was (the probe's positions are rolled back)."""
    keep = session.cache_len
    nfe, blocks, next_block = session.nfe, session.blocks, session.next_block
    vocab = session.embed_tokens.weight.shape[0]
    out = []
    with torch.inference_mode():
        if keep < CONTEXT:
            ids = torch.arange(CONTEXT - keep) % vocab
            session.forward(ids, session.next_positions(ids.shape[0]))
        base = session.cache_len
        for n in SIZES:
            ids = torch.arange(n) % vocab
            times = []
            for _ in range(REPEATS + 1):
                sync(session.device)
                start = time.perf_counter()
                logits = session.forward(ids, session.next_positions(n), logits_rows=slice(None))
                logits.argmax(-1).cpu()  # a decoder reads every pass's result once
                times.append(time.perf_counter() - start)
                session.rollback(base)
            out.append(statistics.median(times[1:]))
        session.rollback(keep)
    session.nfe, session.blocks, session.next_block = nfe, blocks, next_block
    return tuple(out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def answer_pass_cost(session: Session) -> Callable[[int], float]:
    """The cost the drafting policy weighs for this answer's passes: its share of the batched pass
    where it decodes beside others (`session.batch_rows`), else the pass-cost curve itself."""
    return PassCost.of(session).shared(session.batch_rows)


def model_pass_cost(model: PreTrainedModel, family: Family, refresh: bool = False) -> PassCost:
    """The pass-cost model of a loaded model (a fresh session over it, the lean path where it runs)."""
    return PassCost.of(Session(model, family), refresh)
