"""Discovery's self-check: decisions are tried on a copy of the model before anyone relies on them.

Torch-Pruning's index mapping goes wrong on some graphs (Swin's patch merging concatenates four shifted
token grids; reshapes that fold heads into tokens), and a pruned model then fails in its forward pass or
costs what the records do not say. :func:`failing_decisions` prunes half of every decision's units (every
other unit, so index mappings are exercised) on one copy, runs it and compares its measured FLOPs and
parameters with the records' prediction; when that fails, it bisects the decisions to find those at fault,
which discovery then leaves at full width with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch_pruning as tp
from torch import Tensor, nn

from amc.graph.probe import counting_flops
from amc.graph.records import LayerGraph
from amc.pruning.heads import after_prune, group_root, kept_units, unit_indices


def _predicted(graph: LayerGraph, removed: np.ndarray) -> tuple[int, int]:
    """FLOPs and parameters the records give when decision ``d`` loses ``removed[d]`` units."""
    flops = params = 0
    for rec in graph.modules:
        out = rec.out_channels - sum(k * removed[d] for d, k in rec.out_deps)
        inp = (rec.in_channels - sum(k * removed[d] for d, k in rec.in_deps)) if rec.has_inputs else 0
        flops += rec.flops_coef * out * inp + rec.flops_linear * out
        params += rec.weight_coef * out * inp + rec.vector_coef * out
    return graph.other_flops + flops, graph.other_params + params


class _Trial:
    """A copy of the model pruned decision by decision (half the units of each, every other unit), checked after
    each: it still runs and costs what the records predict."""

    def __init__(self, model: nn.Module, example: Tensor, graph: LayerGraph) -> None:
        self.example, self.graph = example, graph
        self.pruned = copy.deepcopy(model).eval()
        self.removed = np.zeros(len(graph.layers), dtype=np.int64)
        self.dg = tp.DependencyGraph().build_dependency(self.pruned, example, verbose=False)

    def apply(self, d: int) -> str | None:
        """Prunes decision ``d``; why the model is now broken, or None."""
        spec = self.graph.layers[d]
        drop = list(range(1, spec.out_channels, 2))[: spec.out_channels // 2]
        if not drop:
            return None
        try:
            module = self.pruned.get_submodule(spec.name)
            root, prune_fn = group_root(spec, module, self.dg)
            self.dg.get_pruning_group(root, prune_fn, unit_indices(spec, drop)).prune()
            after_prune(spec, module, len(drop))
            if kept_units(spec, root, module, self.dg) != spec.out_channels - len(drop):
                return "Torch-Pruning removes a different number of its units"
        except Exception as exc:  # noqa: BLE001 - the reason the decision is left whole
            return _broken(exc)
        self.removed[d] = len(drop)
        return None

    def check(self) -> str | None:
        """Why the model as pruned so far fails or costs other than predicted; None when it is fine."""
        try:
            with counting_flops() as counter, torch.no_grad():
                self.pruned(self.example)
        except Exception as exc:  # noqa: BLE001
            return _broken(exc)
        measured = (counter.get_total_flops() // self.example.shape[0], sum(p.numel() for p in self.pruned.parameters()))
        predicted = _predicted(self.graph, self.removed)
        if measured != predicted:
            return f"the pruned model costs {measured} (FLOPs, parameters), not the predicted {predicted}"
        return None


def _broken(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"pruning it breaks the model ({type(exc).__name__}: {text})"


def _try(model: nn.Module, example: Tensor, graph: LayerGraph, which: list[int]) -> str | None:
    """Why pruning decisions ``which`` together fails; None when the pruned copy runs and costs as predicted."""
    try:
        trial = _Trial(model, example, graph)
    except Exception as exc:  # noqa: BLE001
        return _broken(exc)
    for d in which:
        reason = trial.apply(d)
        if reason is not None:
            return reason
    return trial.check()


def failing_decisions(model: nn.Module, example: Tensor, graph: LayerGraph,
                      progress: Callable[[str], None] = lambda _: None) -> dict[int, str]:
    """Decision index -> why it cannot be pruned, for the decisions whose trial pruning fails.

    First every decision is tried at once. When that fails, one copy is pruned decision by decision and checked
    after each; a decision that breaks it fails, and the walk goes on from the next one on a fresh copy. When decisions fail, the others are tried together once
    more, and bisected if that fails (two halves that pass alone but not together both fail).
    """
    failing: dict[int, str] = {}
    n, start = len(graph.layers), 0
    progress("trying every decision on a pruned copy")
    if _try(model, example, graph, list(range(n))) is None:
        return failing  # the usual case: one copy, one trace, one forward pass
    while start < n:
        progress(f"trying decision {graph.layers[start].name!r} and those after it on a pruned copy")
        try:
            trial = _Trial(model, example, graph)
        except Exception as exc:  # noqa: BLE001 - the model cannot be copied or traced again: no decision holds
            return {d: _broken(exc) for d in range(n)}
        for d in range(start, n):
            reason = trial.apply(d) or trial.check()
            start = d + 1
            if reason is not None:
                failing[d] = reason
                break
    if not failing:
        return failing

    def bisect(which: list[int], reason: str | None = None) -> bool:
        if reason is None:
            progress(f"trying {len(which)} decision(s) from {graph.layers[which[0]].name!r} together")
            reason = _try(model, example, graph, which)
        if reason is None:
            return True
        if len(which) == 1:
            failing[which[0]] = reason
            return False
        half = len(which) // 2
        first, second = bisect(which[:half]), bisect(which[half:])
        if first and second:
            failing.update({d: f"{reason} (with other decisions)" for d in which})
        return False

    rest = [d for d in range(n) if d not in failing]
    if rest:
        bisect(rest)
    return failing
