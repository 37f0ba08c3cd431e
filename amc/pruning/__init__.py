"""Pruning: criteria that rank channels or weights, the pruner, the policy format and export.

- :mod:`amc.pruning.criteria`: :class:`Criterion` and its registry (l1, l2, random, taylor, apoz, obd).
- :mod:`amc.pruning.pruner`: :func:`prune_model`, a policy applied to a copy of a model.
- :mod:`amc.pruning.policy`: :class:`Policy`, what a search produces (``amc-policy/1`` files).
- :mod:`amc.pruning.export`: ``torch.export`` and ONNX programs of pruned models.
"""
