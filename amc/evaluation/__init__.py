"""Evaluation: what a candidate policy is worth.

- :mod:`amc.evaluation.evaluator`: :class:`PolicyEvaluator`, prune a copy, recalibrate BN, score it.
- :mod:`amc.evaluation.scores`: :class:`Score` and its registry (bn, reconstruct, finetune:K[+kd]).
- :mod:`amc.evaluation.metrics`: accuracy of a model on a split.
- :mod:`amc.evaluation.compare`: base model against pruned model, side by side.
"""
