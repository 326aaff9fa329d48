"""Objectives: ``forward(batch) -> {"loss": ..., metrics...}``; state updates are explicit methods.

Importing each module registers its objectives."""
from mmssl.objectives import byol, colorization, cpc, dino, mae, moco, rotnet, simclr, simsiam, swav, tcn  # noqa: F401
