"""Audio: the embedded synthetic speech corpus, datasets/audiofolder sources, crops."""
from mmssl.modalities.audio.data import SAMPLE_RATE, AudioReadError, decode, open_audio, random_crop  # noqa: F401
