"""Objectives: ``forward(batch) -> {"loss": ..., metrics...}``; state updates are explicit methods."""
from mmssl.objectives import cpc  # noqa: F401  (registers)
