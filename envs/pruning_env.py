"""The AMC pruning environment: one step per prunable layer group, one keep ratio per step (and with
``--depth`` one keep/drop step per removable block, :mod:`envs.depth_steps`)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amc.errors import ConfigError
from amc.evaluation.evaluator import Evaluator
from amc.graph.discover import LayerGraph
from amc.pruning.depth import DepthCost, DepthKeep
from amc.pruning.policy import Policy
from envs.depth_steps import BLOCK, blocks_ahead, episode_steps, skipped
from envs.projection import BudgetProjector
from envs.rewards import RewardInput, get_reward

_KIND_CODE = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
OBS_FEATURES = (
    "t", "kind", "in_channels", "out_channels", "h", "w", "stride", "kernel", "layer_cost",
    "reduced", "rest", "prev_action",
)
DEPTH_FEATURES = ("is_block", "dropped")  # appended with --depth (a DepthCost cost model)


def check_render_mode(render_mode: str | None, supported: list[str]) -> None:
    """Refuses a ``render_mode`` the environment cannot draw, naming the ones it can."""
    if render_mode is not None and render_mode not in supported:
        raise ConfigError(f"render_mode {render_mode!r} is not supported by amc/ChannelPruning-v0; supported: "
                          f"{[None, *supported]} (use render_mode=None)")


class PruningEnv(gym.Env):
    """Layer-by-layer channel (or weight) pruning under a resource budget (He et al., AMC, ECCV 2018).

    The environment owns no data and no model: it receives the layer graph, a cost model and an
    evaluator, and evaluates the finished policy once, at the last step.

    ## Action Space

    ``Box(-1, 1, (1,), float32)``: mapped linearly to a keep ratio in ``[min_keep, max_keep]`` for the
    current layer. With ``clip=True`` (default) the ratio is then lowered, if needed, so the budget stays
    reachable with every later layer at ``min_keep``. An action outside the space raises ``ValueError``.

    With depth (a :class:`~amc.pruning.depth.DepthCost` cost model, ``--depth``) each removable block adds a
    step just before its first width decision (:mod:`envs.depth_steps`):

    | step  | action ``a`` in [-1, 1]                                                                |
    |-------|----------------------------------------------------------------------------------------|
    | width | keep ratio ``min_keep + (a + 1) / 2 * (max_keep - min_keep)``, clipped to the budget      |
    | block | ``(a + 1) / 2`` in [0, 1]: below 0.5 (``a < 0``) drops the block (replaced by the identity) |

    After a drop the width decisions inside the block (and blocks nested in it) are skipped: they keep 1.0
    and take no step. The clipping then costs the model without the dropped blocks; a drop only lowers the
    cost, so every episode stays feasible.

    ## Observation Space

    ``Box(0, 1, (12,), float32)``, AMC's layer embedding, each feature scaled to [0, 1] by the base
    model's range over layers:

    | index | feature        | meaning                                                       |
    |-------|----------------|---------------------------------------------------------------|
    | 0     | t              | layer index / (layers - 1)                                    |
    | 1     | kind           | 0 conv, 0.5 group with a depthwise conv, 1 linear             |
    | 2-3   | in/out_channels| of the group's leading layer                                  |
    | 4-5   | h, w           | input spatial size of the leading layer                       |
    | 6-7   | stride, kernel | of the leading layer                                          |
    | 8     | layer_cost     | resource of this layer group in the base model                |
    | 9     | reduced        | share of the base cost removed by the decided layers          |
    | 10    | rest           | share of the base cost in the layers after this one           |
    | 11    | prev_action    | keep ratio chosen at the previous step (1 at t = 0)           |
    | 12    | is_block       | with depth only: 1 at a block's keep/drop step, else 0        |
    | 13    | dropped        | with depth only: share of the removable blocks dropped so far |

    Without depth the observation has the first 12 features (``Box(0, 1, (12,))``), with it 14.

    ## Rewards

    0 until the last step; then the named reward (:mod:`envs.rewards`) of the evaluated policy:
    ``acc`` (default), ``acc_log_flops``, ``acc_log_params``, or ``acc_penalty`` (for ``clip=False``).

    ## Episode End

    Terminates after the last layer (``len(graph)`` steps; with depth at most :attr:`max_steps`, fewer when
    blocks are dropped); never truncates by itself. ``info`` at the last step holds ``policy`` (a
    :class:`~amc.pruning.policy.Policy`), ``accuracy``, ``cost``, ``base_cost``, ``cost_ratio``, ``keep``,
    ``dropped`` (the dropped blocks' names) and ``eval`` (the :class:`~amc.evaluation.evaluator.EvalResult`).

    ## Version History

    * v0: first version (``render_mode``: ``None`` or ``"rgb_array"``); block steps with a depth cost model.

    Args:
        graph: The base model's :class:`~amc.graph.discover.LayerGraph`.
        cost_model: Cost model of the constrained resource (``FlopsCost``, ``ParamsCost``, ...).
        evaluator: Evaluates the finished policy.
        budget: Fraction of the base cost the pruned model may keep, in (0, 1].
        min_keep, max_keep: Range of keep ratios (AMC: 0.2 .. 1.0).
        reward: Name of the reward in :data:`envs.rewards.REWARDS`.
        clip: Apply AMC's budget clipping (every episode feasible).
        criterion, granularity: Recorded in the produced :class:`~amc.pruning.policy.Policy`.
        render_mode: Gymnasium's standard argument: ``None`` or ``"rgb_array"`` (:meth:`render` returns
            the keep ratios decided so far as a bar image; Stable-Baselines3's ``make_vec_env`` asks
            for it by default).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, graph: LayerGraph, cost_model, evaluator: Evaluator, *, budget: float,
                 min_keep: float = 0.2, max_keep: float = 1.0, reward: str = "acc", clip: bool = True,
                 criterion: str = "l1", granularity: str = "channel", render_mode: str | None = None,
                 projector: BudgetProjector | None = None) -> None:
        super().__init__()
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        if cost_model.granularity != granularity:
            raise ConfigError(f"cost model granularity {cost_model.granularity!r} differs from {granularity!r}")
        self.graph = graph
        self.cost_model = cost_model
        self.evaluator = evaluator
        # The search problem's projector where it has one (a sparsity search's: exact, and onto N:M levels).
        self.projector = projector or BudgetProjector(cost_model, budget, min_keep=min_keep, max_keep=max_keep)
        self.budget = self.projector.budget
        self.min_keep, self.max_keep = self.projector.min_keep, self.projector.max_keep
        self.reward_name = reward
        self._reward = get_reward(reward, resource=cost_model.resource)
        self.clip = clip
        self.criterion = criterion
        self.granularity = granularity
        self.n_layers = len(graph.layers)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.blocks = tuple(cost_model.blocks) if isinstance(cost_model, DepthCost) else ()
        self._steps = episode_steps(graph, self.blocks) if self.blocks else None
        n_features = len(OBS_FEATURES) + (len(DEPTH_FEATURES) if self.blocks else 0)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_features,), dtype=np.float32)
        self._static = self._static_features()  # (L, 9)
        layer_costs = np.array([s.params if cost_model.resource == "params" else s.flops for s in graph.layers],
                               dtype=np.float64)
        self._rest = np.cumsum(layer_costs[::-1])[::-1] - layer_costs  # cost after layer t
        if cost_model.resource in ("flops", "params"):
            self._rest /= cost_model.base  # AMC scales "rest" and "reduced" by the same total
        else:  # a latency budget: "rest" stays a share of the FLOPs (layers have no latency of their own)
            from amc.cost.analytic import FlopsCost

            self._rest /= FlopsCost(graph).base
        self._keep = np.ones(self.n_layers)
        self._t = 0
        self._walk = None
        self._i = 0  # with depth: index into self._steps
        self._dropped: list[str] = []
        self._skips: tuple[set[int], set[int]] = (set(), set())

    @property
    def max_steps(self) -> int:
        """Steps of the longest episode: the layers, and with depth the blocks (no block dropped)."""
        return len(self._steps) if self._steps is not None else self.n_layers

    def _static_features(self) -> np.ndarray:
        cost_attr = "params" if self.cost_model.resource == "params" else "flops"
        rows = [
            [t, _KIND_CODE[s.kind], s.in_channels, s.out_channels, s.in_hw[0], s.in_hw[1], s.stride, s.kernel,
             getattr(s, cost_attr)]
            for t, s in enumerate(self.graph.layers)
        ]
        table = np.array(rows, dtype=np.float64)
        # Column 1 (kind) is already in [0, 1] and stays unscaled: its codes mean the same in every model.
        for col in (0, *range(2, table.shape[1])):
            lo, hi = table[:, col].min(), table[:, col].max()
            table[:, col] = (table[:, col] - lo) / (hi - lo) if hi > lo else 0.0
        return table

    def _observation(self) -> np.ndarray:
        t = self._t
        if self._walk is not None:
            decided_cost = self._walk.cost()
        else:
            decided = self._keep.copy()
            decided[t:] = 1.0
            decided_cost = self.cost_model.cost_of(decided)
        prev = self._keep[t - 1] if t > 0 else 1.0
        if self._steps is not None:  # the decided widths without the dropped blocks; the step's kind
            t = min(t, self.n_layers - 1)
            decided_cost = self._fixed().value_shapes(self._walk.out, self._walk.inp)
            block = self._i < len(self._steps) and self._steps[self._i].kind == BLOCK
            extra = [float(block), len(self._dropped) / len(self.blocks)]
        else:
            extra = []
        reduced = 1.0 - decided_cost / self.cost_model.base
        obs = np.concatenate([self._static[t], [reduced, self._rest[t], prev], extra])
        np.maximum(obs, 0.0, out=obs)  # np.clip(obs, 0, 1), without its dispatch cost (the env's every step)
        return np.minimum(obs, 1.0, out=obs).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._keep = np.ones(self.n_layers)
        self._t = 0
        # The decided layers' module shapes, updated per step (O(modules)); None: computed from scratch.
        self._walk = self.projector.walk() if self.clip else None
        if self._steps is not None:
            self._walk = self.cost_model.prefix_walk()  # the observation reads it, clipped or not
            self._i, self._dropped, self._skips = 0, [], (set(), set())
            self._t = self._steps[0].t
        return self._observation(), {}

    def keep_of_action(self, action: float) -> float:
        """The keep ratio an action in [-1, 1] stands for, before budget clipping."""
        return self.min_keep + (float(action) + 1.0) / 2.0 * (self.max_keep - self.min_keep)

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``: the episode so far, ``(64, 16 * layers, 3)`` uint8.

        One bar per layer, its height the keep ratio: decided layers blue, the current layer grey (full
        height), later layers empty; a red line marks ``min_keep``. ``None`` without a render mode.
        """
        if self.render_mode is None:
            return None
        height, width = 64, 16
        image = np.full((height, width * self.n_layers, 3), 255, dtype=np.uint8)  # (H, W, 3)
        for t in range(self.n_layers):
            if t > self._t:
                continue
            keep, colour = (self._keep[t], (31, 119, 180)) if t < self._t else (1.0, (190, 190, 190))
            top = height - max(1, round(keep * height))
            image[top:, t * width + 2 : (t + 1) * width - 2] = colour
        image[height - max(1, round(self.min_keep * height)), :] = (214, 39, 40)
        return image

    def _action(self, action) -> float:
        """The action as one number in [-1, 1]; raises for a finished episode or an action outside the space."""
        if self._t >= self.n_layers:
            raise RuntimeError("the episode is over: call reset() before step()")
        value = np.asarray(action, dtype=np.float64).reshape(-1)
        if value.shape != (1,) or not math.isfinite(value[0]) or not -1.0 - 1e-6 <= value[0] <= 1.0 + 1e-6:
            raise ValueError(f"action must be one number in [-1, 1] (Box(-1, 1, (1,))), got {action!r}")
        return min(max(value[0], -1.0), 1.0)

    def _keep_for(self, action) -> float:
        keep = self.keep_of_action(self._action(action))
        if self._walk is not None:
            return self.projector.clip_next(self._walk, keep)
        if self.clip:
            keep = self.projector.clip(self._t, self._keep, keep)
        return keep

    def _fixed(self):
        """With depth: the cost model of the model without the blocks dropped so far."""
        return self.cost_model.fixed(self._dropped)

    def _depth_apply(self, action) -> None:
        """With depth: takes the current step's action, then moves past the steps a drop makes skip."""
        value = self._action(action)
        step = self._steps[self._i]
        # While widths alone cannot reach the budget, the clipping takes the blocks ahead as dropped, and a block
        # is kept only when the budget stays reachable with it (envs.projection: assumed_dropped, reachable).
        gone = self.projector.assumed_dropped(self._dropped, blocks_ahead(self._steps, self._i, self.blocks,
                                                                          self._skips[1]))
        if step.kind == BLOCK:
            if (value + 1.0) / 2.0 < 0.5 or (self.clip and not self.projector.reachable(self._walk, gone)):
                self._dropped.append(self.blocks[step.index].name)
                self._skips = skipped(self.graph, self.blocks, self._dropped)
        else:
            keep = self.keep_of_action(value)
            if self.clip:
                keep = self.projector.for_dropped(gone).clip_next(self._walk, keep)
            self._keep[step.t] = keep
            self._walk.decide(keep)
        self._i += 1
        widths, blocks = self._skips
        while self._i < len(self._steps):
            step = self._steps[self._i]
            if step.kind == BLOCK and step.index in blocks:
                self._i += 1
            elif step.kind != BLOCK and step.index in widths:
                self._keep[step.t] = 1.0
                self._walk.decide(1.0)
                self._i += 1
            else:
                break
        self._t = self._steps[self._i].t if self._i < len(self._steps) else self.n_layers

    def _depth_keep(self) -> list[float]:
        keep = self._keep.tolist()
        return DepthKeep(keep, self._dropped) if self._dropped else keep

    def actions_for(self, keep) -> list[np.ndarray]:
        """The actions of the episode that produces ``keep`` (and the blocks it drops, a
        :class:`~amc.pruning.depth.DepthKeep`), one per step it takes: a demonstration to replay. Width actions
        give the keep ratios (the clipping leaves a feasible policy as it is); block actions are -1 (drop) or 1.
        """
        span = self.max_keep - self.min_keep

        def width(k: float) -> np.ndarray:
            value = 2.0 * (k - self.min_keep) / span - 1.0 if span > 0 else 1.0
            return np.array([np.clip(value, -1.0, 1.0)], dtype=np.float32)

        if self._steps is None:
            return [width(k) for k in keep]
        dropped = list(getattr(keep, "dropped", ()))
        widths, blocks = skipped(self.graph, self.blocks, dropped)
        actions = []
        for step in self._steps:
            if step.kind == BLOCK and step.index not in blocks:
                actions.append(np.array([-1.0 if self.blocks[step.index].name in dropped else 1.0], dtype=np.float32))
            elif step.kind != BLOCK and step.index not in widths:
                actions.append(width(keep[step.index]))
        return actions

    def _final(self, keep: list[float]) -> list[float]:
        """An episode's keep ratios; projected once more where the projector meets the budget exactly (a sparsity
        search's, onto N:M levels too), so that every episode ends on the budget."""
        return self.projector.project(keep) if getattr(self.projector, "exact", False) else keep

    def _policy(self, keep: list[float]) -> Policy:
        return Policy.from_ratios(self.graph, keep, granularity=self.granularity, criterion=self.criterion,
                                  resource=self.cost_model.resource, budget=self.budget)

    def preview(self, action) -> Policy | None:
        """The policy ``action`` would finish (None before the last step); changes nothing.

        Lets a vectorised wrapper evaluate the terminal policies of many environments in one batch.
        """
        if self._steps is not None:
            saved = (self._keep.copy(), self._t, self._i, list(self._dropped), self._skips,
                     self._walk.t, self._walk.out.copy(), self._walk.inp.copy())
            try:
                self._depth_apply(action)
                return self._policy(self._final(self._depth_keep())) if self._i >= len(self._steps) else None
            finally:
                (self._keep, self._t, self._i, self._dropped, self._skips,
                 self._walk.t, self._walk.out, self._walk.inp) = saved
        if self._t != self.n_layers - 1:
            return None
        keep = self._keep.copy()
        keep[self._t] = self._keep_for(action)
        return self._policy(self._final(keep.tolist()))

    def step(self, action):
        if self._steps is not None:
            self._depth_apply(action)
            if self._i < len(self._steps):
                return self._observation(), 0.0, False, False, {}
            return self._finish()
        keep = self._keep_for(action)
        self._keep[self._t] = keep
        if self._walk is not None:
            self._walk.decide(keep)
        self._t += 1
        if self._t < self.n_layers:
            return self._observation(), 0.0, False, False, {}
        return self._finish()

    def _finish(self):
        keep = self._final(self._depth_keep())
        cost = self.cost_model.cost(keep)  # a DepthCost reads the dropped blocks
        policy = self._policy(keep)
        result = self.evaluator.evaluate(policy)
        reward = self._reward(RewardInput(result.accuracy, cost, self.cost_model.base, self.budget,
                                          self.cost_model.resource))
        info = {"policy": policy, "accuracy": result.accuracy, "cost": cost, "base_cost": self.cost_model.base,
                "cost_ratio": cost / self.cost_model.base, "keep": keep, "dropped": list(self._dropped),
                "eval": result}
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[0] = 1.0
        return obs, float(reward), True, False, info
