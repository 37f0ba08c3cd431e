"""Cost models: what a policy's pruned model costs, as a fraction of the base model.

- :mod:`amc.cost.base`: :class:`CostModel`, the public base every cost model extends, :class:`ShapeCost`
  (a cost of the modules' channel counts, which the analytic and latency models share); :mod:`amc.cost.names`
  the resources a budget can constrain.
- :mod:`amc.cost.analytic`: exact FLOPs and parameter counts.
- :mod:`amc.cost.latency`: measured latency from a per-layer lookup table (:mod:`amc.cost.lookup` is its
  layout, :mod:`amc.cost.timing` times it).
"""
