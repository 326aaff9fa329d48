"""Tasks: one file each; importing this package registers them all."""
from mmssl.tasks import (  # noqa: F401
    barlow_twins_image,
    byol_image,
    colorize_video,
    cpc_audio,
    mae_audio,
    mae_image,
    mae_video,
    moco_image,
    rotnet_image,
    simclr_audio,
    simclr_image,
    simsiam_image,
    supcon_image,
    swav_image,
    tcn_video,
    vicreg_image,
)
