"""Layer discovery: the pruning decisions of a model and the modules each one resizes.

- :mod:`amc.graph.discover`: :func:`discover`, one decision per group of channel-coupled layers.
- :mod:`amc.graph.records`: what discovery produces (:class:`LayerSpec`, :class:`LayerGraph`).
- :mod:`amc.graph.widths`: keep ratio -> channels / weights, the one rounding rule.
- :mod:`amc.graph.probe`, :mod:`amc.graph.groups`, :mod:`amc.graph.build`: the probing pass, Torch-Pruning's
  dependency groups turned into decisions, and the records built from both.
- :mod:`amc.graph.attention`: attention modules prunable by whole heads (timm's fused qkv, Hugging Face's
  separate q/k/v, grouped-query attention); :mod:`amc.graph.verify`: decisions tried on a pruned copy;
  :mod:`amc.graph.budget`: discovery's time budget; :mod:`amc.graph.caches`: caches that stop a deepcopy.
- :mod:`amc.graph.blocks`: blocks wrapped by an identity skip, removable whole (depth pruning, with
  :mod:`amc.pruning.depth`).
"""
