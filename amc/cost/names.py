"""The resources a budget can constrain (no heavy imports: the command line and the policy format read them)."""

from __future__ import annotations

ANALYTIC_RESOURCES = ("flops", "params")  # counted exactly from the layer graph (amc.cost.analytic)
RESOURCES = (*ANALYTIC_RESOURCES, "latency")  # latency: measured on the device (amc.cost.latency)
