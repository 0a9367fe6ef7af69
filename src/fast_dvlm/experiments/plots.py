"""The results page's figures: accuracy per variant against the noise, and the inference frontier."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from .sweep import default_point


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_variants(accuracies: dict[str, float], base: float, noise: float, path: Path) -> None:
    """Short-answer accuracy of each variant; the band is `direct` plus or minus the noise."""
    plt = pyplot()
    names = list(accuracies)
    direct = accuracies[names[0]]
    fig, axes = plt.subplots(figsize=(9, 4.2))
    bars = axes.bar(range(len(names)), [accuracies[n] for n in names], color="#4c72b0")
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.axhspan(
        direct - noise, direct + noise, color="#dd8452", alpha=0.25, label=f"direct ± noise ({noise:.1f})"
    )
    axes.axhline(base, color="#55a868", linestyle="--", label=f"AR base, ar decoding ({base:.1f})")
    axes.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    axes.set(ylabel="short-answer accuracy, mean over tasks (%)", ylim=(0, 100),
             title="Conversion variants, masked diffusion at tau 0.9")  # fmt: skip
    axes.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(points: list[dict], default: dict, within_noise: float, path: Path) -> None:
    """Accuracy against tokens/s, one colour per block size, tau beside each point; the frontier
    joined by a line, the default settings ringed, and shaded the accuracies from `within_noise` up
    to the best, which this many items cannot tell apart from the best."""
    plt = pyplot()
    fig, axes = plt.subplots(figsize=(8, 5))
    accuracies = [p["accuracy"] for p in points]
    axes.axhspan(within_noise, max(accuracies), color="0.9", label="within the noise of the best")
    for size in sorted({p["block_size"] for p in points}):
        mine = [p for p in points if p["block_size"] == size]
        axes.scatter(
            [p["tokens_per_s"] for p in mine], [p["accuracy"] for p in mine], s=30, label=f"B = {size}"
        )
        for p in mine:
            axes.annotate(f"{p['threshold']:g}", (p["tokens_per_s"], p["accuracy"]), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")  # fmt: skip
    front = sorted((p for p in points if p["frontier"]), key=lambda p: p["tokens_per_s"])
    axes.plot([p["tokens_per_s"] for p in front], [p["accuracy"] for p in front], color="black", lw=1,
              label="frontier")  # fmt: skip
    chosen = default_point(points, default)
    if chosen is not None:
        label = f"default (tau {default['threshold']}, B {default['block_size']})"
        axes.scatter([chosen["tokens_per_s"]], [chosen["accuracy"]], s=160, facecolors="none",
                     edgecolors="red", label=label)  # fmt: skip
    low, high = min(min(accuracies), within_noise), max(accuracies)
    axes.set(xlabel="tokens per second", ylabel="accuracy, mean over tasks (%)",
             ylim=(max(low - 5, 0), min(high + 5, 100)),
             title="Masked diffusion on the direct model: tau (labels) and block size")  # fmt: skip
    axes.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
