"""Tasks: one file each; importing this package registers them all."""
from mmssl.tasks import (  # noqa: F401
    byol_image,
    colorize_video,
    cpc_audio,
    dino_image,
    mae_audio,
    mae_image,
    mae_video,
    moco_image,
    rotnet_image,
    simclr_audio,
    simclr_image,
    simsiam_image,
    swav_image,
    tcn_video,
)
