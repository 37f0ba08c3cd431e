"""The language-model benchmark (``scripts/bench.py lm``): where per-block sparsity pays (issue 36).

The built-in ``tiny-lm`` (:mod:`amc.models.lm`), trained once on the standard library's code corpus
(:mod:`amc.data.code_corpus`, :func:`amc.lm_train.load_or_train_lm`) and cached like every base model. Per average
sparsity (50%, 60% and 70% unstructured; 50% with N:M levels dense, 2:4 and 1:4), rows:

- ``dense``: the model before pruning (once).
- ``uniform``: the same sparsity in every unit (with N:M, 2:4 everywhere); ``owl``: OWL's outlier-weighted
  sparsities (Yin et al., 2024; with N:M snapped to the levels by
  :meth:`~amc.sparsity.budget.SparsityBudget.project_levels`). Both are the product's own baselines
  (:func:`search.lm_baselines.lm_baseline_starts`), found once.
- ``random``: the random search; ``default``: ``scripts/search.py``'s defaults (Optuna TPE after the baselines),
  ``evaluations`` each, one per search seed (:func:`search.bench.searched.searched`).

A search scores its candidates by perplexity on the first ``eval.heldout_windows`` held-out windows; every row is
reported on the next ``report_windows`` held-out windows, which no search has seen (and, beside it, on the scored
windows). Each finished cell is written at once to ``<root>/<kind><sparsity>/<row>/seed<s>/cell.json``
(``<root>/dense/seed<s>/cell.json``); a rerun reads finished cells back, and an interrupted search resumes from its
``history.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from amc.data.lm_tokens import LMDataConfig
from amc.evaluation.lm_evaluator import LMEvalConfig
from amc.lm_train import LMTrainConfig
from search.bench.common import BenchError, machine
from search.bench.markdown import markdown_table, mean_std, update_section
from search.bench.searched import default_row_text, product_defaults, searched, write_cell

if TYPE_CHECKING:
    from rich.console import Console
    from torch import Tensor, nn

    from amc.lm_context import LMContext, LMContextConfig

ROWS = ("dense", "uniform", "owl", "random", "default")
SEARCHES = ("random", "default")
UNSTRUCTURED, NM = "unstructured", "nm"
_KIND = {UNSTRUCTURED: "unstructured", NM: "N:M"}
NM_LEVELS = ("dense", "2:4", "1:4")
TARGET_SPARSITY = 0.7  # the targets: at 70% unstructured, default <= OWL and <= 0.7 x uniform
UNIFORM_FACTOR = 0.7


@dataclass(frozen=True)
class LMBenchSettings:
    """What one run holds fixed. Cells are keyed by kind, sparsity, row and seed only: use a new ``root`` for other
    settings (the base model is keyed by its own settings in the cache)."""

    sparsities: tuple[float, ...] = (0.5, 0.6, 0.7)
    nm_sparsities: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluations: int = 100  # of each search, random and default rows alike
    workers: int = 1
    min_keep: float = 0.2
    select: str = "none"  # the default row's deploy rung: a language model's search has none
    report_windows: int = 128
    per: str = "block"
    threads: int = 1
    model_kwargs: tuple[tuple[str, object], ...] = ()
    data: LMDataConfig = field(default_factory=LMDataConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    eval: LMEvalConfig = field(default_factory=LMEvalConfig)

    def __post_init__(self) -> None:
        for s in (*self.sparsities, *self.nm_sparsities):
            if not 0 < s < 1:
                raise BenchError(f"average sparsity {s!r} must be in (0, 1), e.g. 0.7")
        if not self.seeds:
            raise BenchError("seeds is empty: give at least one search seed, e.g. 0")
        if self.evaluations < 1 or self.report_windows < 1:
            raise BenchError(f"evaluations ({self.evaluations}) and report_windows ({self.report_windows}) must be "
                             "at least 1")
        if self.eval.heldout_windows is None:
            raise BenchError("eval.heldout_windows is None (every held-out window scored): give a count, so that the "
                             "report's windows are ones no search has seen")

    @property
    def default_evaluations(self) -> int:
        """The default row's evaluations (read by :func:`search.bench.searched.product_defaults`)."""
        return self.evaluations


@dataclass(frozen=True)
class LMCell:
    kind: str  # unstructured, nm, or dense
    sparsity: float  # average sparsity asked for
    row: str
    seed: int
    heldout_perplexity: float  # on the report windows, unseen by every search
    scored_perplexity: float  # on the held-out windows the searches score
    average_sparsity: float  # counted from the masks
    decisions: tuple[str, ...]  # per unit: keep ratio, or N:M level
    chosen: str  # a search's history.csv origin of its policy (search, baseline:uniform, baseline:owl)
    search_seconds: float
    evaluations: int
    seconds: float


def lm_context_config(settings: LMBenchSettings) -> LMContextConfig:
    """The context of every row: ``tiny-lm`` (seed 0, trained and cached) on the code corpus."""
    from amc.lm_context import LMContextConfig

    return LMContextConfig(model="tiny-lm", model_kwargs=settings.model_kwargs, data=settings.data,
                           train=settings.train, per=settings.per, eval=settings.eval, seed=0)


def nm_search_supported() -> bool:
    """Whether the product searches N:M levels (an :class:`~amc.lm_context.LMContextConfig` ``levels`` field)."""
    from amc.lm_context import LMContextConfig

    return "levels" in {f.name for f in dataclasses.fields(LMContextConfig)}


def plan(settings: LMBenchSettings, *, nm_search: bool) -> list[tuple[str, float, str, int]]:
    """The cells in order: (kind, sparsity, row, seed); the found-once rows with the first seed only."""
    first = settings.seeds[0]
    cells = [("dense", 0.0, "dense", first)]
    for kind, sparsities in ((UNSTRUCTURED, settings.sparsities), (NM, settings.nm_sparsities)):
        for sparsity in sparsities:
            cells += [(kind, sparsity, row, first) for row in ("uniform", "owl")]
            if kind == UNSTRUCTURED or nm_search:
                cells += [(kind, sparsity, row, seed) for seed in settings.seeds for row in SEARCHES]
    return cells


def _cell_file(root: Path, kind: str, sparsity: float, row: str, seed: int) -> Path:
    folder = root / "dense" if kind == "dense" else root / f"{kind}{sparsity:g}" / row
    return folder / f"seed{seed}" / "cell.json"


@contextmanager
def _masked(ctx: LMContext, decisions: Sequence) -> Iterator[nn.Module]:
    """The model with ``decisions`` (keep ratios through the evaluator, or N:M levels) masked; dense afterwards."""
    from amc.sparsity import NM as Level, restore, sparsify

    if decisions and isinstance(decisions[0], Level):
        try:
            sparsify(ctx.model, ctx.layout, list(decisions), criterion=ctx.config.eval.criterion,
                     stats=ctx.evaluator.stats)
            yield ctx.model
        finally:
            restore(ctx.model, ctx.layout, ctx.evaluator.dense)
    else:
        with ctx.evaluator.sparsified(list(decisions)) as model:
            yield model


def _measured(ctx: LMContext, report: Tensor, decisions: Sequence) -> tuple[float, float, float]:
    """(perplexity on the report windows, on the scored windows, average sparsity counted from the masks)."""
    from amc.evaluation.lm_scores import next_token_nll
    from amc.sparsity import masked_per_layer

    with _masked(ctx, decisions) as model:
        removed = sum(masked_per_layer(model, ctx.layout).values())
        unseen = math.exp(next_token_nll(model, report, batch_size=ctx.config.eval.batch_size))
        scored = math.exp(ctx.evaluator.heldout_nll(model))
    return unseen, scored, removed / ctx.layout.total


def baselines(ctx: LMContext, settings: LMBenchSettings, kind: str, sparsity: float) -> dict[str, list]:
    """The product's uniform and OWL decisions at ``sparsity`` (``baseline:uniform``, ``baseline:owl`` of every
    search); with N:M, snapped to :data:`NM_LEVELS` (uniform: 2:4 everywhere at 50%)."""
    from amc.sparsity import SparsityBudget
    from envs.sparsity_projection import SparsityProjector
    from search.lm_baselines import OWL, UNIFORM, lm_baseline_starts
    from search.problem import SearchProblem

    config = product_defaults(settings, budget=1.0 - sparsity, min_keep=settings.min_keep)
    projector = SparsityProjector(ctx.cost_model(), config.budget, min_keep=config.min_keep, max_keep=config.max_keep)
    problem = SearchProblem(graph=ctx.graph, cost_model=ctx.cost_model(), projector=projector,
                            evaluator=ctx.evaluator, history=None, strategy="baselines",
                            criterion=ctx.config.eval.criterion, granularity=ctx.config.eval.granularity)
    starts = {s.origin: list(s.keep) for s in lm_baseline_starts(problem, ctx)}
    found = {"uniform": starts[UNIFORM], "owl": starts[OWL]}
    if kind == NM:
        budget = SparsityBudget(ctx.layout, 1.0 - sparsity, levels=NM_LEVELS)
        found = {row: budget.project_levels([1.0 - k for k in keep]) for row, keep in found.items()}
    return found


def run_cell(root: Path, ctx: LMContext, settings: LMBenchSettings, report: Tensor, *, kind: str, sparsity: float,
             row: str, seed: int, search_ctx: LMContext | None = None) -> LMCell:
    """One cell: read back when finished, else run and written at once (a search row on ``search_ctx``, default
    ``ctx``: the N:M searches' context decides levels)."""
    cell_file = _cell_file(root, kind, sparsity, row, seed)
    if cell_file.exists():
        data = json.loads(cell_file.read_text())
        return LMCell(**{**data, "decisions": tuple(data["decisions"])})
    start = time.perf_counter()
    search_seconds, evaluations, chosen = 0.0, 0, ""
    if row == "dense":
        decisions: list = [1.0] * len(ctx.graph)
    elif row in ("uniform", "owl"):
        decisions = baselines(ctx, settings, kind, sparsity)[row]
        search_seconds = time.perf_counter() - start
    else:
        ctx = search_ctx or ctx
        run = cell_file.parent / "search"
        found = searched(settings, ctx, run=run, strategy=row, budget=1.0 - sparsity, seed=seed,
                         evaluations=settings.evaluations)
        decisions = found.policy.ratios(ctx.graph)
        if ctx.config.levels:  # an N:M search's keep ratios are its units' levels: recorded as such (2:4, ...)
            decisions = ctx.graph.unit_levels(decisions)
        search_seconds, evaluations, chosen = found.search_seconds, found.evaluations, found.chosen
    unseen, scored, average = _measured(ctx, report, decisions)
    cell = LMCell(kind=kind, sparsity=sparsity, row=row, seed=seed, heldout_perplexity=unseen,
                  scored_perplexity=scored, average_sparsity=average,
                  decisions=tuple(str(d) if not isinstance(d, float) else f"{d:.4f}" for d in decisions),
                  chosen=chosen, search_seconds=search_seconds, evaluations=evaluations,
                  seconds=time.perf_counter() - start)
    write_cell(cell_file, cell)
    return cell


def report_windows(ctx: LMContext, settings: LMBenchSettings) -> Tensor:
    """The held-out windows after those the searches score: the report's, unseen by every search."""
    scored = settings.eval.heldout_windows
    windows = ctx.data.heldout.windows(ctx.data.seq_len, limit=scored + settings.report_windows)
    if len(windows) <= scored:
        raise BenchError(f"the held-out split has {len(windows)} windows of {ctx.data.seq_len} tokens, all scored by "
                         f"the searches (heldout_windows {scored}): lower heldout_windows or seq_len")
    return windows[scored:]


def lm_bench(root: Path, settings: LMBenchSettings = LMBenchSettings(), *, progress: bool = True,
             on_cell: Callable[[LMCell, bool], None] | None = None) -> tuple[list[LMCell], dict]:
    """Runs (or reads back) every cell; returns them and the base model's facts (``base.json`` in ``root``)."""
    import torch

    from amc.lm_context import build_lm_context
    from amc.progress import progress_bar

    torch.set_num_threads(settings.threads)
    root.mkdir(parents=True, exist_ok=True)
    ctx = build_lm_context(lm_context_config(settings), progress=progress)
    base_file = root / "base.json"
    if not base_file.exists() or (ctx.base is not None and not ctx.base.cached):
        base_file.write_text(json.dumps({"train_seconds": ctx.base.seconds if ctx.base else 0.0,
                                         "cached": bool(ctx.base and ctx.base.cached),
                                         "parameters": sum(p.numel() for p in ctx.model.parameters()),
                                         "prunable": ctx.layout.total, "units": list(ctx.graph.names)}) + "\n")
    base = json.loads(base_file.read_text())
    report = report_windows(ctx, settings)
    base["report_windows"] = len(report)
    cells = []
    nm_search = nm_search_supported()
    todo = plan(settings, nm_search=nm_search)
    search_ctx = {UNSTRUCTURED: ctx, NM: None}
    if nm_search and settings.nm_sparsities:  # the same dense model, its decisions N:M levels
        search_ctx[NM] = build_lm_context(dataclasses.replace(ctx.config, levels=NM_LEVELS), data=ctx.data,
                                          model=ctx.model, progress=progress)
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("lm", total=len(todo), status="")
        for kind, sparsity, row, seed in todo:
            bar.update(task, status=f"{kind} {sparsity:g} {row} seed {seed}")
            cached = _cell_file(root, kind, sparsity, row, seed).exists()
            cell = run_cell(root, ctx, settings, report, kind=kind, sparsity=sparsity, row=row, seed=seed,
                            search_ctx=search_ctx.get(kind))
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell, cached)
            bar.advance(task)
    return cells, base


def _of(cells: Sequence[LMCell], kind: str, sparsity: float, row: str) -> list[LMCell]:
    if row == "dense":
        return [c for c in cells if c.row == "dense"]
    return [c for c in cells if c.kind == kind and c.sparsity == sparsity and c.row == row]


def _mean(cells: Sequence[LMCell], attr: str = "heldout_perplexity") -> float:
    return statistics.mean(getattr(c, attr) for c in cells)


def _missed_reason(cells: Sequence[LMCell], bound: float, scored_bound: float, *, what: str) -> str:
    """Why the default row misses ``bound``, from the data: its best seed, its figure on the windows it scored, the
    random row and the best any row reached."""
    default = _of(cells, UNSTRUCTURED, TARGET_SPARSITY, "default")
    best = min(c.heldout_perplexity for c in default)
    scored = _mean(default, "scored_perplexity")
    parts = [f"best seed {best:.2f} ({best / bound - 1:+.1%})"]
    if scored <= scored_bound:
        parts.append(f"on the windows it scored it meets it ({scored:.2f} vs {scored_bound:.2f}): the search fits "
                     "the scored windows and the unseen ones disagree")
    else:
        parts.append(f"it misses on the windows it scored too ({scored:.2f} vs {scored_bound:.2f}): no policy that "
                     f"good among its {default[0].evaluations} evaluations")
    rows = {row: _mean(_of(cells, UNSTRUCTURED, TARGET_SPARSITY, row)) for row in ("uniform", "owl", "random")
            if _of(cells, UNSTRUCTURED, TARGET_SPARSITY, row)}
    if "random" in rows:
        parts.append(f"random search {rows['random']:.2f}")
    if what == "uniform" and "owl" in rows:
        parts.append(f"OWL itself is {rows['owl'] / rows['uniform']:.2f}x uniform here (0.56x on Llama-3-8B, the "
                     "issue's reference): how much the allocation can gain on this model")
    return "; ".join(parts)


def target_lines(cells: Sequence[LMCell]) -> list[str]:
    """The issue's targets at 70% unstructured, on the unseen windows (means over search seeds): met or missed,
    with the reason."""
    head = (f"Targets at {TARGET_SPARSITY:.0%} unstructured (held-out perplexity on the unseen windows, mean over "
            "seeds):")
    group = {row: _of(cells, UNSTRUCTURED, TARGET_SPARSITY, row) for row in ("uniform", "owl", "default")}
    if not all(group.values()):
        return [head, "", f"- not measured: this run has no {TARGET_SPARSITY:.0%} unstructured cells "
                          "of the default, uniform and OWL rows"]
    default, owl, uniform = (_mean(group[r]) for r in ("default", "owl", "uniform"))
    scored = {r: _mean(group[r], "scored_perplexity") for r in ("owl", "uniform")}
    lines = [head, ""]
    for name, bound, scored_bound, what in (("OWL", owl, scored["owl"], "owl"),
                                            (f"{UNIFORM_FACTOR:g} x uniform", UNIFORM_FACTOR * uniform,
                                             UNIFORM_FACTOR * scored["uniform"], "uniform")):
        met = default <= bound
        line = (f"- default search <= {name}: **{'met' if met else 'missed'}**, {default:.2f} vs {bound:.2f} "
                f"({default / bound - 1:+.1%})")
        if not met:
            line += ". Why: " + _missed_reason(cells, bound, scored_bound, what=what)
        lines.append(line + ".")
    return lines


def lm_markdown(cells: Sequence[LMCell], settings: LMBenchSettings, *, command: str, machine: str, base: dict) -> str:
    """The ``lm`` section: a summary line per sparsity, one table per sparsity, the targets."""
    dense = _of(cells, "", 0.0, "dense")
    nm_searched = any(c.kind == NM and c.row in SEARCHES for c in cells)
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"`tiny-lm` ({base['parameters']:,} parameters, {base['prunable']:,} prunable in {len(base['units'])} "
        f"{settings.per} units), trained {settings.train.steps} steps on the standard library's code corpus "
        f"(windows of {settings.data.seq_len} tokens, BPE vocabulary {settings.data.vocab_size}), "
        + ("loaded from the cache" if base["cached"] else f"{base['train_seconds'] / 60:.1f} min to train (cached)")
        + f". Criterion {settings.eval.criterion} ({settings.eval.calibration_windows} calibration windows). Rows: "
        "`uniform` sparsity and `owl` (OWL, M 5, lambda 0.08), the product's baselines, found once; `random`: random "
        f"search, {settings.evaluations} evaluations; " + default_row_text(settings).rstrip(".")
        + f"; both after the two baselines (counted in the evaluations column), min_keep {settings.min_keep:g}, one "
        f"search per seed ({', '.join(map(str, settings.seeds))}). The searches score perplexity on the first "
        f"{settings.eval.heldout_windows} held-out windows; **held-out ppl** is on the next "
        f"{base['report_windows']} held-out windows, which no search has seen. With N:M each unit takes a level of "
        + ", ".join(NM_LEVELS) + " (uniform: 2:4 everywhere; OWL's sparsities snapped to the levels). Sparsity "
        f"counted from the masks. Whole benchmark: {sum(c.seconds for c in cells) / 60:.0f} min of cell time.",
        "",
    ]
    if settings.nm_sparsities and not nm_searched:
        lines += ["N:M random and default rows: not run, scripts/search.py does not search N:M levels yet "
                  "(no `levels` in its language-model context).", ""]
    summary = []
    for kind, sparsities in ((UNSTRUCTURED, settings.sparsities), (NM, settings.nm_sparsities)):
        for sparsity in sparsities:
            means = {row: _mean(_of(cells, kind, sparsity, row)) for row in ROWS if _of(cells, kind, sparsity, row)}
            if "uniform" not in means:
                continue
            summary.append((f"{sparsity:.0%} {_KIND[kind]}",
                            *(f"{means[r]:.2f}" if r in means else "not run" for r in ROWS),
                            f"{means['default'] / means['uniform']:.2f}" if "default" in means else "",
                            f"{means['default'] / means['owl']:.2f}" if "default" in means else ""))
    lines += markdown_table(("average sparsity", *ROWS, "default / uniform", "default / OWL"), summary)
    lines += ["", *target_lines(cells), ""]
    for kind, sparsities in ((UNSTRUCTURED, settings.sparsities), (NM, settings.nm_sparsities)):
        for sparsity in sparsities:
            uniform = _of(cells, kind, sparsity, "uniform")
            if not uniform:
                continue
            rows = []
            for row in ROWS:
                mine = dense if row == "dense" else _of(cells, kind, sparsity, row)
                if mine:
                    rows.append((row, mean_std([c.heldout_perplexity for c in mine], scale=1),
                                 mean_std([c.scored_perplexity for c in mine], scale=1),
                                 f"{_mean(mine) / _mean(uniform):.3f}",
                                 f"{_mean(mine, 'average_sparsity'):.4f}", f"{_mean(mine, 'search_seconds'):.0f}",
                                 str(mine[0].evaluations) if row in SEARCHES else "",
                                 " / ".join(sorted({c.chosen for c in mine})) if row in SEARCHES else "",
                                 str(len(mine))))
            lines += [f"**{sparsity:.0%} average sparsity, {_KIND[kind]}**", ""]
            lines += markdown_table(("row", "held-out ppl", "ppl on the scored windows", "x uniform",
                                     "sparsity (masks)", "search s", "evaluations", "policy from", "seeds"), rows)
            lines.append("")
    return "\n".join(lines)


def lm_report(root: Path, settings: LMBenchSettings, *, command: str, markdown: Path, console: Console) -> None:
    """Runs (or reads back) every cell, prints each and the tables, writes the ``lm`` section of ``markdown``."""
    def on_cell(cell: LMCell, cached: bool) -> None:
        where = "cached" if cached else f"{cell.seconds:.0f} s"
        console.print(f"{cell.kind} {cell.sparsity:g} {cell.row:<8} seed {cell.seed}: held-out perplexity "
                      f"{cell.heldout_perplexity:.2f} (scored windows {cell.scored_perplexity:.2f}), sparsity "
                      f"{cell.average_sparsity:.4f} ({where})")

    cells, base = lm_bench(root, settings, on_cell=on_cell)
    body = lm_markdown(cells, settings, command=command, machine=machine(), base=base)
    console.print(body)
    update_section(markdown, "lm", body, title="Language models: per-block sparsity of the built-in LM")


__all__ = ["LMBenchSettings", "LMCell", "NM_LEVELS", "ROWS", "baselines", "lm_bench", "lm_context_config",
           "lm_markdown", "lm_report", "nm_search_supported", "plan", "run_cell", "target_lines"]
