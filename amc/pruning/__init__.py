"""Pruning: criteria that rank channels or weights, the pruner, the policy format and export.

- :mod:`amc.pruning.criteria`: :class:`Criterion` and its registry (l1, l2, random, taylor, apoz, obd).
- :mod:`amc.pruning.pruner`: :func:`prune_model`, a policy applied to a copy of a model.
- :mod:`amc.pruning.policy`: :class:`Policy`, what a search produces (``amc-policy/2`` files; ``/1`` still loads).
- :mod:`amc.pruning.export`: ``torch.export`` and ONNX programs of pruned models.
- :mod:`amc.pruning.depth`: removable blocks dropped (replaced by the identity) and the exact cost of a
  width + depth policy.
"""
