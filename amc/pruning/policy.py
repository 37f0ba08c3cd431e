"""The pruning policy: what a search produces and a user exports and re-applies.

JSON format ``amc-policy/2``::

    {"format": "amc-policy/2", "model_fingerprint": "...", "granularity": "channel", "criterion": "l1",
     "resource": "flops", "budget": 0.3, "keep": {"features.0": 0.5, ...}, "dropped": ["layers.3", ...],
     "channels": {"features.0": 16, ...}, "metrics": {"val_accuracy": 0.97, ...}, "meta": {...}}

``dropped`` names the removable blocks (:mod:`amc.graph.blocks`) replaced by the identity after width pruning
(``--depth``); ``amc-policy/1`` files, written before depth pruning, have no such field and load with none.
Loading is strict: unknown or missing fields, a wrong format version or an out-of-range value raise
:class:`~amc.errors.PolicyError` naming the field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amc.cost.names import RESOURCES
from amc.errors import PolicyError
from amc.graph.discover import LayerGraph
from amc.graph.widths import GRANULARITIES
from amc.pruning.criteria import criterion_names
from amc.sparsity.criteria import CRITERIA as SPARSITY_CRITERIA

FORMAT = "amc-policy/2"
FORMAT_V1 = "amc-policy/1"  # before depth pruning: no "dropped" (read as none)
_REQUIRED = ("format", "model_fingerprint", "granularity", "criterion", "resource", "budget", "keep")
_OPTIONAL = ("channels", "metrics", "meta", "dropped")


def policy_criteria() -> tuple[str, ...]:
    """The criteria a policy may name: the pruning criteria, then the sparsity criteria of language models."""
    return criterion_names() + tuple(c for c in SPARSITY_CRITERIA if c not in criterion_names())


@dataclass(frozen=True)
class Policy:
    """Per-layer keep ratios for one model.

    Attributes:
        keep: ``LayerSpec.name`` -> fraction of channels (or weights) kept, in (0, 1].
        granularity: ``"channel"`` (structured) or ``"weight"`` (unstructured).
        criterion: Which channels/weights go first (a name in :data:`amc.pruning.criteria.CRITERIA`, or for a
            language model's sparsity a name in :data:`amc.sparsity.criteria.CRITERIA`).
        model_fingerprint: :func:`amc.graph.discover.fingerprint` of the base model; refuses a foreign model.
        resource: ``"flops"``, ``"params"`` or ``"latency"``.
        budget: Fraction of the base model's resource the pruned model may keep.
        metrics: Measurements taken at search time (accuracy, cost ratio, ...).
        channels: Channel counts the keep ratios give when written (informative: pruning always derives
            the channels from ``keep`` with the rounding rule, so an edited count has no effect).
        meta: Free-form provenance (strategy, seed, versions, ...). ``meta["unpruned"]`` maps each layer
            that keeps its width because it cannot be pruned to the reason (see ``LayerGraph.skipped``).
        dropped: Qualified names of the blocks replaced by the identity after width pruning (sorted; empty
            without ``--depth``).
    """

    keep: Mapping[str, float]
    granularity: str = "channel"
    criterion: str = "l1"
    model_fingerprint: str = ""
    resource: str = "flops"
    budget: float = 1.0
    metrics: Mapping[str, float] = field(default_factory=dict)
    channels: Mapping[str, int] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    dropped: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.dropped, str) or not all(isinstance(n, str) and n for n in self.dropped):
            raise PolicyError(f"policy field 'dropped' must be a list of block names, got {self.dropped!r}")
        object.__setattr__(self, "dropped", tuple(sorted(set(self.dropped))))
        if not isinstance(self.keep, Mapping) or not self.keep:
            raise PolicyError("policy field 'keep' is empty: give one keep ratio per layer")
        for name, ratio in self.keep.items():
            if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool) or math.isnan(ratio) \
                    or not 0.0 < ratio <= 1.0:
                raise PolicyError(f"policy field 'keep.{name}' must be a number in (0, 1], got {ratio!r}")
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"policy field 'granularity' must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.criterion not in policy_criteria():
            raise PolicyError(f"policy field 'criterion' must be one of {policy_criteria()}, got {self.criterion!r}")
        if self.resource not in RESOURCES:
            raise PolicyError(f"policy field 'resource' must be one of {RESOURCES}, got {self.resource!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0.0 < self.budget <= 1.0:
            raise PolicyError(f"policy field 'budget' must be in (0, 1], got {self.budget!r}")
        for name in ("keep", "metrics", "channels", "meta"):  # private copies: callers' dicts may change
            object.__setattr__(self, name, dict(getattr(self, name)))

    @classmethod
    def from_ratios(cls, graph: LayerGraph, ratios: Sequence[float], **kwargs: Any) -> Policy:
        """A policy for ``graph`` from one ratio per decision, in graph order (and the blocks ``ratios``
        drops, when it is a :class:`~amc.pruning.depth.DepthKeep` and no ``dropped`` is given)."""
        kwargs.setdefault("dropped", tuple(getattr(ratios, "dropped", ())))
        channels = graph.channels(list(ratios))
        kwargs.setdefault("model_fingerprint", graph.fingerprint)
        if graph.skipped:  # layers discovery could not prune keep their width: say which and why
            kwargs["meta"] = {**kwargs.get("meta", {}), "unpruned": {s.name: s.reason for s in graph.skipped}}
        return cls(keep=dict(zip(graph.names, map(float, ratios))),
                   channels=dict(zip(graph.names, channels)), **kwargs)

    def ratios(self, graph: LayerGraph) -> list[float]:
        """Keep ratios in ``graph`` order, after checking the policy belongs to that model; with dropped
        blocks a :class:`~amc.pruning.depth.DepthKeep` that names them.

        Raises:
            PolicyError: The fingerprint differs, or a layer is missing or unknown.
        """
        if self.model_fingerprint and self.model_fingerprint != graph.fingerprint:
            raise PolicyError(
                f"policy is for model fingerprint {self.model_fingerprint!r} but this model is "
                f"{graph.fingerprint!r}: apply it to the model (and --model/--dataset) it was searched on"
            )
        missing = [n for n in graph.names if n not in self.keep]
        unknown = [n for n in self.keep if n not in graph.names]
        if missing or unknown:
            raise PolicyError(f"policy field 'keep' does not match the model: missing layers {missing}, "
                              f"unknown layers {unknown}")
        ratios = [float(self.keep[n]) for n in graph.names]
        if self.dropped:  # the keep vector names its dropped blocks (a tuple, like every DepthKeep)
            from amc.pruning.depth import DepthKeep

            return DepthKeep(ratios, self.dropped)  # type: ignore[return-value]
        return ratios

    def with_metrics(self, **metrics: float) -> Policy:
        """A copy with ``metrics`` added (or overwritten)."""
        return Policy(**self._replace(metrics={**self.metrics, **metrics}))

    def with_meta(self, **meta: Any) -> Policy:
        """A copy with ``meta`` entries added (or overwritten)."""
        return Policy(**self._replace(meta={**self.meta, **meta}))

    def _replace(self, **changes: Any) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in
                  ("keep", "granularity", "criterion", "model_fingerprint", "resource", "budget",
                   "metrics", "channels", "meta", "dropped")}
        values.update(changes)
        return values

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_fingerprint": self.model_fingerprint, "granularity": self.granularity,
                "criterion": self.criterion, "resource": self.resource, "budget": self.budget,
                "keep": dict(self.keep), "dropped": list(self.dropped), "channels": dict(self.channels), "metrics": dict(self.metrics),
                "meta": dict(self.meta)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError(f"a policy must be a JSON object, got {type(data).__name__}")
        if data.get("format") not in (FORMAT, FORMAT_V1):
            raise PolicyError(f"policy field 'format' must be {FORMAT!r} (or {FORMAT_V1!r}), got {data.get('format')!r}")
        missing = [k for k in _REQUIRED if k not in data]
        optional = _OPTIONAL if data["format"] == FORMAT else tuple(k for k in _OPTIONAL if k != "dropped")
        unknown = [k for k in data if k not in _REQUIRED + optional]
        if missing:
            raise PolicyError(f"policy misses field(s) {missing}")
        if unknown:
            raise PolicyError(f"policy has unknown field(s) {unknown}; remove them")
        for name in ("keep", "channels", "metrics", "meta"):
            if name in data and not isinstance(data[name], dict):
                raise PolicyError(f"policy field {name!r} must be a JSON object, got {type(data[name]).__name__}")
        if not isinstance(data.get("dropped", []), list):
            raise PolicyError(f"policy field 'dropped' must be a JSON list of block names, got {data['dropped']!r}")
        return cls(**{k: v for k, v in data.items() if k != "format"})

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"policy is not valid JSON ({exc}); pass a policy.json written by a search") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} does not exist")
        return cls.from_json(path.read_text())
