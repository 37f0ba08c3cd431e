"""``report.png``: the search curve, the chosen per-layer keep ratios, accuracy against cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from amc.layers import LayerGraph
from search.history import Record


def write_report(path: Path, records: Sequence[Record], graph: LayerGraph, *, best: Record,
                 uniform_keep: Sequence[float] | None, budget: float, title: str) -> Path:
    """Three panels: reward per evaluation with the best so far; keep ratios (and channels) of the
    best policy against the uniform one, AMC-style; accuracy against cost ratio of every policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    index = [r.index for r in records]
    rewards = [r.reward for r in records]
    best_so_far = [max(rewards[: i + 1]) for i in range(len(rewards))]
    ax = axes[0]
    ax.plot(index, rewards, ".", alpha=0.4, label="reward of each evaluation")
    ax.plot(index, best_so_far, "-", color="C3", label="best so far")
    ax.set(xlabel="evaluation", ylabel="reward (validation accuracy)", title="search curve")
    ax.legend(loc="lower right")

    ax = axes[1]
    x = range(len(graph.layers))
    base = [spec.out_channels for spec in graph.layers]
    kept = graph.channels(list(best.keep))
    ax.bar(x, base, color="lightgray", label="base channels")
    ax.bar(x, kept, color="C0", label="kept by the best policy")
    if uniform_keep is not None:
        ax.plot(x, graph.channels(list(uniform_keep)), "k_", markersize=14, mew=2, label="uniform policy")
    ax.set_xticks(list(x), [spec.name for spec in graph.layers], rotation=70, fontsize=7)
    ax.set(ylabel="channels", title="per-layer widths")
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.scatter([r.cost_ratio for r in records], [r.accuracy for r in records], s=10, alpha=0.5)
    ax.scatter([best.cost_ratio], [best.accuracy], color="C3", s=60, marker="*", label="best")
    ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set(xlabel="cost ratio", ylabel="validation accuracy", title="accuracy vs cost")
    ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
