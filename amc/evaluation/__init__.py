"""Evaluation: what a candidate policy is worth.

- :mod:`amc.evaluation.evaluator`: :class:`PolicyEvaluator`, prune a copy, recalibrate BN, score it.
- :mod:`amc.evaluation.scores`: :class:`Score` and its registry (bn, reconstruct, finetune:K[+kd]); the
  numerics of the last two are in :mod:`amc.evaluation.reconstruct` and :mod:`amc.evaluation.finetune`.
- :mod:`amc.evaluation.metrics`: accuracy and loss of a model on a split (the one loop).
- :mod:`amc.evaluation.compare`: base model against pruned model, side by side.
"""
