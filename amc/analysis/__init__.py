"""Experiments around a search: per-layer sensitivity and lottery tickets."""
