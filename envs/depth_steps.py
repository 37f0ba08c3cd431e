"""The step order of a depth + width episode: each block's keep/drop step just before its first width step.

A removable block (:mod:`amc.graph.blocks`) is decided where the episode reaches it in forward order: before
the first width decision whose leading layer lies in it or after it. Once a block is dropped, the width
decisions all of whose layers lie inside it (:func:`amc.pruning.depth.irrelevant_decisions`) and the blocks
nested in it are skipped: they keep 1.0 and take no step. Because a block's step comes before every one of
its inner decisions, the skipped decisions are always still ahead when it is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amc.graph.blocks import Block
from amc.graph.records import LayerGraph
from amc.pruning.depth import irrelevant_decisions

WIDTH, BLOCK = "width", "block"


@dataclass(frozen=True)
class Step:
    """One decision of an episode: ``kind`` ``"width"`` (``index`` a width decision) or ``"block"`` (``index``
    a block of the cost model's list); ``t`` is the width decision it sits at (its observation's layer)."""

    kind: str
    index: int
    t: int


def episode_steps(graph: LayerGraph, blocks: Sequence[Block]) -> list[Step]:
    """Every possible step in order: blocks (outer before inner) just before their first width decision."""
    order = {r.name: i for i, r in enumerate(graph.modules)}
    last = len(graph.modules)

    def position(spec) -> int:
        names = [spec.name, *spec.members]
        return min((order[n] for n in names if n in order), default=last)

    decision_at = [position(spec) for spec in graph.layers]
    steps: list[Step] = []
    placed = [(min((order[r] for r in b.records if r in order), default=last), i) for i, b in enumerate(blocks)]
    for t, at in enumerate(decision_at):
        steps += [Step(BLOCK, i, t) for start, i in placed if start <= at and not _placed(steps, i)]
        steps.append(Step(WIDTH, t, t))
    # A block after the last width decision (none in the built-in models) is decided at the end.
    steps += [Step(BLOCK, i, len(graph.layers) - 1) for _, i in placed if not _placed(steps, i)]
    return steps


def blocks_ahead(steps: Sequence[Step], i: int, blocks: Sequence[Block], skipped_blocks: set[int]) -> list[str]:
    """Names of the blocks still to decide after step ``i`` (those a drop made skip left out): what the width
    clipping takes as gone while widths alone cannot reach the budget
    (:meth:`envs.projection.BudgetProjector.assumed_dropped`)."""
    return [blocks[s.index].name for s in steps[i + 1:] if s.kind == BLOCK and s.index not in skipped_blocks]


def _placed(steps: list[Step], block: int) -> bool:
    return any(s.kind == BLOCK and s.index == block for s in steps)


def skipped(graph: LayerGraph, blocks: Sequence[Block], dropped: Sequence[str]) -> tuple[set[int], set[int]]:
    """(width decisions, block indices) a policy that drops ``dropped`` skips: its blocks' irrelevant decisions
    and the blocks nested in a dropped one."""
    if not dropped:
        return set(), set()
    widths = set(irrelevant_decisions(graph, blocks, dropped=dropped))
    gone = [b for b in blocks if b.name in set(dropped)]
    inner = {i for i, b in enumerate(blocks) if any(d.contains(b.name) and d.name != b.name for d in gone)}
    return widths, inner


__all__ = ["BLOCK", "WIDTH", "Step", "blocks_ahead", "episode_steps", "skipped"]
