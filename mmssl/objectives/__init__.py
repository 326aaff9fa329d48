"""Objectives: ``forward(batch) -> {"loss": ..., metrics...}``; state updates are explicit methods."""
from mmssl.objectives import byol, cpc, mae, moco, rotnet, simclr, simsiam, swav  # noqa: F401  (registers)
