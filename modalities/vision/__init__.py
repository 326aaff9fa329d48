"""Vision: the embedded synthetic shapes set, datasets/imagefolder sources, augmentation recipes."""
from mmssl.modalities.vision.augment import (  # noqa: F401
    MEAN,
    STD,
    BYOLViews,
    EvalView,
    MAEView,
    MultiCropViews,
    SimCLRViews,
    denormalize,
    normalize,
    run_seeded,
)
from mmssl.modalities.vision.data import ImageReadError, decode, open_images  # noqa: F401
from mmssl.modalities.vision.synthetic import CLASSES, generate_shapes, load_demo_images  # noqa: F401
