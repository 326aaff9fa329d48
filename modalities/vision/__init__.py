"""Vision: the embedded synthetic shapes set, datasets/imagefolder sources, view settings and the
batched view maker (workers decode and draw one seed per image; views are drawn and made on the device)."""
from mmssl.modalities.vision.augment import (  # noqa: F401
    MEAN,
    NUM_PARAMS,
    STD,
    DecodeAndDraw,
    EvalView,
    ViewSettings,
    check_views,
    denormalize,
    draw_params,
    item_seed,
    mae_views,
    normalize,
    working_size,
)
from mmssl.modalities.vision.batched import ItemViews, MAEView, make_views  # noqa: F401
from mmssl.modalities.vision.data import ImageReadError, decode, open_images  # noqa: F401
from mmssl.modalities.vision.synthetic import CLASSES, generate_shapes, load_demo_images  # noqa: F401
