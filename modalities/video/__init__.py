"""Video: clip readers (decord / torchcodec / PyAV), clip sampling, video and DAVIS sources, the
embedded two-camera demo."""
from mmssl.modalities.video.clips import SafeClips, VideoClips, read_clip, read_views  # noqa: F401
from mmssl.modalities.video.davis import DavisRoot, is_davis_root  # noqa: F401
from mmssl.modalities.video.reader import VideoReader, VideoReadError, available_backends, write_video  # noqa: F401
from mmssl.modalities.video.sampler import clip_indices  # noqa: F401
from mmssl.modalities.video.sources import VideoSource, open_videos  # noqa: F401
from mmssl.modalities.video.synthetic import demo_root, render_scene  # noqa: F401
from mmssl.modalities.video.synthetic_ambiguous import ambiguous_root, render_ambiguous_scene  # noqa: F401

DEMO_DAVIS = ("demo", "demo_ambiguous")  # names of the embedded DAVIS-layout sets


def davis_path(spec: str) -> str:
    """A DAVIS root given by name or path: "demo" (the demo's test scenes, objects coloured apart
    from the background), "demo_ambiguous" (objects cut from the background's own texture, see
    synthetic_ambiguous.py), rendered on first use, or any other string as a path."""
    if spec == "demo":
        return str(demo_root() / "davis")
    if spec == "demo_ambiguous":
        return str(ambiguous_root())
    return spec
