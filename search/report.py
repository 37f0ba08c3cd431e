"""Run reports: ``report.png`` (three panels) and ``report.html`` (the panels and the comparison table).

``report.html`` embeds its images (base64 PNG), so it opens in any browser without network access.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from amc.graph.discover import LayerGraph
from search.history import Record


def write_report(path: Path, records: Sequence[Record], graph: LayerGraph, *, best: Record,
                 uniform_keep: Sequence[float] | None, budget: float, title: str) -> Path:
    """Three panels: reward per evaluation with the best so far; keep ratios (and channels) of the
    best policy against the uniform one, AMC-style (with ``--depth`` the layers of the blocks it drops hatched
    red and the blocks named); accuracy against cost ratio of every policy."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figures alone

    fig = Figure(figsize=(17, 4.8))
    axes = fig.subplots(1, 3)
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
    widths_title = "per-layer widths"
    if best.dropped:  # their layers are gone whatever their width says
        gone = [t for t, spec in enumerate(graph.layers)
                if any(spec.name == b or spec.name.startswith(b + ".") for b in best.dropped)]
        ax.bar(gone, [base[t] for t in gone], color="none", edgecolor="C3", hatch="//", label="in a dropped block")
        widths_title += "\ndropped blocks: " + ", ".join(best.dropped)
    ax.set(ylabel="channels", title=widths_title)
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.scatter([r.cost_ratio for r in records], [r.accuracy for r in records], s=10, alpha=0.5)
    front = pareto_front(records)
    ax.step([r.cost_ratio for r in front], [r.accuracy for r in front], where="post", color="C2", linewidth=1.2,
            label="Pareto front")
    ax.scatter([best.cost_ratio], [best.accuracy], color="C3", s=60, marker="*", label="best")
    ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set(xlabel="cost ratio", ylabel="validation accuracy", title="accuracy vs cost")
    ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def pareto_front(records: Sequence[Record]) -> list[Record]:
    """Records no other record beats in both accuracy (higher) and cost ratio (lower), by cost."""
    front: list[Record] = []
    for record in sorted(records, key=lambda r: (r.cost_ratio, -r.accuracy)):
        if not front or record.accuracy > front[-1].accuracy:
            front.append(record)
    return front


def write_html(path: Path, png: Path, *, title: str, summary: Sequence[tuple[str, str]],
               comparison: Sequence | None, doubts: Sequence = (), hint: str = "") -> Path:
    """``report.html``: a summary, the search figure and the base/pruned comparison table, self-contained.

    ``comparison``: :class:`~amc.evaluation.compare.ModelStats` rows (base first: a ratio row follows the
    models); ``doubts``: :class:`~amc.evaluation.compare.TimingDoubt` s, whose latency cells are marked "(?)"
    and whose reasons are listed under the table with ``hint`` (how to time reliably).
    """
    import base64
    import html

    image = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    table = ""
    if comparison:
        doubted = {d.batch for d in doubts}
        head = "<tr><th>model</th><th>params</th><th>FLOPs</th><th>size KiB</th><th>latency b1 ms</th>" \
               "<th>latency b64 ms</th><th>test acc</th></tr>"
        body = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.params:,}</td><td>{s.flops:,}</td>"
            f"<td>{s.size_bytes / 1024:.1f}</td><td>{_ms(s.latency_ms, 1, doubted)}</td>"
            f"<td>{_ms(s.latency_ms, 64, doubted)}</td><td>{s.test_accuracy:.4f}</td></tr>" for s in comparison)
        if len(comparison) == 2:
            body += _ratio_row(*comparison, doubted)
        table = f"<h2>Base vs pruned</h2><table>{head}{body}</table>" \
                "<p>Size: saved state_dict. Latency: median of torch.utils.benchmark runs on this machine's CPU.</p>"
        if doubts:
            items = "".join(f"<li>{html.escape(d.reason)}</li>" for d in doubts)
            table += f'<div class="doubt"><p><b>Latencies marked (?) are not to be trusted:</b></p><ul>{items}</ul>' \
                     f"<p>{html.escape(hint[:1].upper() + hint[1:])}.</p></div>"
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1800px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} img{{max-width:100%}}
.doubt{{background:#fff4e0;border-left:4px solid #e69500;padding:0.2em 1em}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table>{rows}</table>
<h2>Search curve, per-layer widths, accuracy vs cost (with the Pareto front)</h2>
<img alt="search report" src="data:image/png;base64,{image}">
{table}
</body></html>
""")
    return path


def _ratio_row(base, pruned, doubted: set[int]) -> str:
    """Pruned over base, per column (latency ratios of a doubted batch marked)."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b else "-"

    def latency(batch: int) -> str:
        if batch not in base.latency_ms or batch not in pruned.latency_ms:
            return "not timed"
        return ratio(pruned.latency_ms[batch], base.latency_ms[batch]) + (" (?)" if batch in doubted else "")

    return (f"<tr><td>ratio</td><td>{ratio(pruned.params, base.params)}</td><td>{ratio(pruned.flops, base.flops)}</td>"
            f"<td>{ratio(pruned.size_bytes, base.size_bytes)}</td><td>{latency(1)}</td><td>{latency(64)}</td>"
            "<td></td></tr>")


def _ms(latency: dict[int, float], batch: int, doubted: set[int] = frozenset()) -> str:
    """A latency cell: milliseconds ("(?)" when doubted), or "not timed" (an interrupted search skips the timing)."""
    if batch not in latency:
        return "not timed"
    return f"{latency[batch]:.3f}" + (" (?)" if batch in doubted else "")
