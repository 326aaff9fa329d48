"""Video: clip readers (decord / torchcodec / PyAV), clip sampling, video and DAVIS sources, the
embedded two-camera demo."""
from mmssl.modalities.video.data import (  # noqa: F401
    DavisRoot,
    SafeClips,
    VideoClips,
    VideoSource,
    davis_palette,
    is_davis_root,
    open_videos,
    read_clip,
    read_views,
)
from mmssl.modalities.video.reader import VideoReader, VideoReadError, available_backends, write_video  # noqa: F401
from mmssl.modalities.video.sampler import clip_indices  # noqa: F401
from mmssl.modalities.video.synthetic import demo_root, render_scene  # noqa: F401
