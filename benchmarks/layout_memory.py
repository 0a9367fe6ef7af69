"""Peak memory and time of one conversion training step for each noisy-stream layout (the
paper's vision-efficient concatenation against its alternatives).

    python benchmarks/layout_memory.py --out benchmarks/results/layout_memory

`full` puts vision in both streams (the baseline the paper compares against), `text` is the paper's
vision-efficient concatenation (noisy stream = text positions), `response` is ours (noisy stream =
response positions; identical loss). Each layout runs in a fresh process; peak memory is the growth
of the process's maximum resident set during the measured steps, above what loading took.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = ("full", "text", "response")


def measure(layout: str, image_size: int, batch: int, repeats: int) -> dict:
    import torch
    from PIL import Image

    from fast_dvlm import DiffusionVLM
    from fast_dvlm.conversion.objective import conversion_forward
    from fast_dvlm.conversion.recipe import Recipe
    from fast_dvlm.models.family import TinySize
    from fast_dvlm.models.tiny import build_tiny_model
    from fast_dvlm.train.data import Conversation, render

    torch.manual_seed(0)
    size = TinySize(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688,
                    vision_hidden_size=64, image_size=image_size)  # fmt: skip
    vlm = DiffusionVLM(*build_tiny_model("qwen2_5_vl", size))
    image = Path("/tmp/fast_dvlm_layout.png")
    Image.effect_noise((image_size, image_size), 60).convert("RGB").save(image)
    answer = "The picture shows a grey pattern of noise with no clear object in it at all."
    conversation = Conversation([image], [("<image>\nDescribe the picture.", answer)])
    samples = [render(vlm.processor, vlm.family, conversation) for _ in range(batch)]
    recipe = Recipe(noisy_layout=layout)

    def step() -> float:
        start = time.perf_counter()
        loss, hidden, _ = conversion_forward(vlm.model, vlm.family, samples, recipe, 8, list(range(batch)),
                                             vlm.settings.mask_token_id)  # fmt: skip
        loss.total.backward()
        vlm.model.zero_grad(set_to_none=False)
        return time.perf_counter() - start

    step()  # warm-up: allocates gradients once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = [step() for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = samples[0].input_ids
    return {
        "layout": layout,
        "peak_growth_mb": (peak - before) / 1024,
        "step_s": statistics.median(times),
        "sequence_tokens": ids.shape[0],
        "vision_tokens": int((ids == vlm.model.config.image_token_id).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--image-size", type=int, default=448, help="image side in pixels (448: 256 vision tokens)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layout_memory"))
    parser.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.image_size, args.batch, args.repeats)))
        return
    rows = []
    for layout in LAYOUTS:
        cmd = [sys.executable, __file__, "--worker", layout, "--image-size", str(args.image_size),
               "--batch", str(args.batch), "--repeats", str(args.repeats)]  # fmt: skip
        rows.append(
            json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
        )
    base = rows[0]
    title = (
        f"Conversion step, tiny Qwen2.5-VL, batch {args.batch}, {base['sequence_tokens']} tokens per sample"
    )
    lines = [f"{title} ({base['vision_tokens']} visual)", ""]
    lines += ["| layout | peak memory growth | vs full | step time | vs full |", "|---|---|---|---|---|"]
    for r in rows:
        memory, seconds = r["peak_growth_mb"], r["step_s"]
        lines.append(
            f"| {r['layout']} | {memory:.0f} MB | {memory / base['peak_growth_mb']:.2f}x | "
            f"{seconds:.2f} s | {seconds / base['step_s']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
