"""Objectives: ``forward(batch) -> {"loss": ..., metrics...}``; state updates are explicit methods.

Importing each module registers its objectives."""
from mmssl.objectives import (  # noqa: F401
    barlow_twins,
    byol,
    colorization,
    context_encoder,
    cpc,
    cpc_image,
    cpc_video,
    deepcluster,
    densecl,
    dino,
    exemplar,
    jigsaw,
    mae,
    moco,
    relative_position,
    rotnet,
    simclr,
    simsiam,
    split_brain,
    supcon,
    swav,
    tcn,
    vicreg,
)
