"""A per-unit sparsity search on a language model: what differs from an image model's run (issue 36).

The run is :func:`search.runner.run_search` on a language-model context (``config.context`` an
:class:`~amc.lm_context.LMContextConfig`, built by :func:`~amc.lm_context.build_lm_context`): the same
:class:`~search.problem.SearchProblem` records every evaluation in ``history.csv``, the same strategies propose
keep ratios, the same baselines-first rule, Ray workers and ``--resume`` apply. What differs comes from the
context and is chosen by type, not by a second loop:

- the graph, cost model and evaluator (:class:`~amc.cost.sparsity_cost.SparsityGraph`,
  :class:`~amc.cost.sparsity_cost.SparsityCost`, :class:`~amc.evaluation.lm_evaluator.SparsityEvaluator`);
- the projection (:class:`~envs.sparsity_projection.SparsityProjector`): every candidate has exactly the
  target average sparsity;
- the baselines (:mod:`search.lm_baselines`): uniform sparsity and OWL's layer ratios (``baseline:owl``);
- the outputs (:func:`write_lm_outputs`): ``policy.json`` with the best policy's held-out perplexity, beside
  ``config.json``, ``history.csv``, ``run.log`` and ``study.db`` (Optuna); and unless ``--no-export`` the sparse
  model (:func:`export_lm`): an ``hf:`` model as a ``save_pretrained`` folder with its tokenizer
  (``pruned-hf/``, loaded back by ``transformers`` or ``--model hf:RUN/pruned-hf``), a built-in model as its
  ``state_dict`` (``pruned.pt``, for ``--checkpoint``) and the tokenizer (``tokenizer.json``), and any model as
  ONNX (``pruned.onnx``, input ``input_ids``, output ``logits``) where the ``onnx`` package is installed.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from amc.lm_context import LMContext
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import Record
from search.lm_baselines import OWL, UNIFORM, lm_baseline_starts
from search.problem import SearchProblem

log = logging.getLogger(__name__)
PRETRAINED_DIR = "pruned-hf"  # an hf: model's save_pretrained folder, zeros baked in
STATE_FILE = "pruned.pt"  # a built-in model's state_dict, zeros baked in
TOKENIZER_FILE = "tokenizer.json"  # a built-in model's tokenizer (the BPE trained here)
ONNX_FILE = "pruned.onnx"


@dataclass(frozen=True)
class LMSearchResult:
    """What a language model's sparsity search found: the best record, its policy (written to ``policy.json``)
    and its held-out perplexity, and the uniform baseline's when it was evaluated."""

    out: Path
    problem: SearchProblem
    best: Record
    policy: Policy
    perplexity: float
    uniform_perplexity: float | None
    dense_perplexity: float | None = None
    seconds: float = 0.0
    interrupted: bool = False
    exported: tuple[Path, ...] = ()

    @property
    def evaluations(self) -> int:
        return self.problem.count

    def summary(self) -> list:
        """What ``scripts/search.py`` prints: the held-out perplexities, the per-unit keep ratios, the files."""
        from rich.table import Table

        table = Table(title=f"{self.policy.meta['strategy']} sparsity search: {self.out}")
        for name in ("", "held-out perplexity", "weights kept"):
            table.add_column(name, justify="right" if name else "left")
        if self.dense_perplexity is not None:
            table.add_row("dense model", f"{self.dense_perplexity:.3f}", "1.0000")
        table.add_row(f"searched policy ({self.best.origin})", f"{self.perplexity:.3f}", f"{self.best.cost_ratio:.4f}")
        rows = {r.origin: r for r in self.problem.records}
        if self.uniform_perplexity is not None:
            table.add_row("uniform sparsity", f"{self.uniform_perplexity:.3f}", f"{rows[UNIFORM].cost_ratio:.4f}")
        if OWL in rows and self.policy.meta.get("score") == "ppl":  # with kl, OWL's perplexity was not measured
            table.add_row("OWL", f"{math.exp(rows[OWL].loss):.3f}", f"{rows[OWL].cost_ratio:.4f}")
        units = Table(title="per-unit fraction of weights kept")
        units.add_column("unit")
        units.add_column("searched", justify="right")
        for name, keep in zip(self.policy.keep, self.best.keep):
            units.add_row(name, f"{keep:.3f}")
        files = ", ".join(["policy.json", "history.csv", *(p.name for p in self.exported)])
        wrote = (f"wrote {self.out}/{files} in {self.seconds:.1f} s"
                 + (" (interrupted: best so far)" if self.interrupted else ""))
        return [table, units, wrote]


def write_lm_outputs(config: SearchConfig, ctx: LMContext, out: Path, problem: SearchProblem, *,
                     started: float | None = None, interrupted: bool = False) -> LMSearchResult:
    """Writes ``policy.json`` (the best policy, its held-out perplexity and the uniform baseline's)."""
    best = problem.best
    perplexity = math.exp(best.loss) if ctx.config.eval.score == "ppl" else ctx.evaluator.perplexity(best.keep)
    uniform = next((r for r in problem.records if r.origin == UNIFORM), None)
    uniform_ppl = None
    if uniform is not None:
        uniform_ppl = math.exp(uniform.loss) if ctx.config.eval.score == "ppl" \
            else ctx.evaluator.perplexity(uniform.keep)
    dense = ctx.evaluator.perplexity([1.0] * len(ctx.graph))
    policy = problem.policy(best.keep).with_metrics(
        heldout_perplexity=perplexity, dense_heldout_perplexity=dense, loss=best.loss, score=best.accuracy,
        cost_ratio=best.cost_ratio, average_sparsity=1.0 - best.cost_ratio,
        **({"uniform_heldout_perplexity": uniform_ppl} if uniform_ppl is not None else {}))
    policy = policy.with_meta(strategy=config.strategy, origin=best.origin, score=ctx.config.eval.score,
                              sparsity_criterion=ctx.config.eval.criterion, per=ctx.config.per,
                              model=ctx.config.model, evaluations=problem.count,
                              **({"levels": ctx.graph.level_names(best.keep)} if ctx.config.levels else {}))
    policy.save(out / "policy.json")
    log.info("best %s: held-out perplexity %.3f (uniform %s) at %.4f of the prunable weights", best.origin,
             perplexity, f"{uniform_ppl:.3f}" if uniform_ppl is not None else "not evaluated", best.cost_ratio)
    exported = export_lm(ctx, best.keep, out) if config.export else ()
    seconds = time.perf_counter() - started if started is not None else 0.0
    return LMSearchResult(out=out, problem=problem, best=best, policy=policy, perplexity=perplexity,
                          uniform_perplexity=uniform_ppl, dense_perplexity=dense, seconds=seconds,
                          interrupted=interrupted, exported=exported)


def export_lm(ctx: LMContext, keep: Sequence[float], out: Path) -> tuple[Path, ...]:
    """Writes the model with ``keep``'s zeros baked in (see the module docstring); returns what was written.

    A format that fails is logged and left out: the search's results are written anyway (a ``--resume`` of the
    finished run writes the export again, with no evaluation).
    """
    from amc.sparsity import bake
    from amc.sparsity.export import export_onnx_lm, save_sparse_pretrained

    def save_folder() -> Path:  # an hf: model: its own format, and the tokenizer that read the corpus
        tokenizer = _folder_tokenizer(ctx.config.data.tokenizer or ctx.config.model[3:])
        return save_sparse_pretrained(model, ctx.layout, out / PRETRAINED_DIR, tokenizer=tokenizer)

    def save_state() -> Path:  # a built-in model: weights for --checkpoint, and the BPE trained here
        state = bake(copy.deepcopy(model), ctx.layout).state_dict()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, out / STATE_FILE)
        ctx.data.tokenizer.backend.save(str(out / TOKENIZER_FILE))
        return out / STATE_FILE

    written: list[Path] = []
    with ctx.evaluator.sparsified(list(keep)) as model:
        if ctx.config.model.startswith("hf:"):
            written += _attempt(PRETRAINED_DIR, save_folder)
        else:
            written += _attempt(STATE_FILE, save_state)
        if importlib.util.find_spec("onnx") is None:
            log.info("%s not written: the onnx package is not installed (pip install -e '.[export]')", ONNX_FILE)
        else:
            example = ctx.evaluator.heldout[:2].long()  # (2, T) token ids
            written += _attempt(ONNX_FILE, lambda: export_onnx_lm(model, ctx.layout, example, out / ONNX_FILE))
    for path in written:
        log.info("exported the sparse model: %s", path)
    return tuple(written)


def _attempt(name: str, write) -> list[Path]:
    try:
        return [write()]
    except Exception as exc:  # noqa: BLE001 - exporters raise many types; the search's result must survive
        log.error("%s not written: %s: %s. policy.json is written; the search's figures do not depend on it",
                  name, type(exc).__name__, " ".join(str(exc).split())[:300])
        return []


def _folder_tokenizer(folder: str):
    """The tokenizer of an ``hf:`` model's folder (the one that read the corpus), saved with the sparse model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder).expanduser(), local_files_only=True, trust_remote_code=False)


__all__ = ["ONNX_FILE", "OWL", "PRETRAINED_DIR", "STATE_FILE", "TOKENIZER_FILE", "LMSearchResult", "export_lm",
           "lm_baseline_starts", "write_lm_outputs"]
