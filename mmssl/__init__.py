"""mmssl: self-supervised learning across vision, audio and video.

Encoders, objectives and tasks register themselves by name; a task composes one
modality's data, an encoder and an objective, and ``mmssl.trainer`` runs it on
Hugging Face Accelerate.
"""
from mmssl import encoders, objectives  # noqa: F401  (register the built-ins)
from mmssl.encoders.io import load_encoder, save_encoder  # noqa: F401
from mmssl.registry import ENCODERS, OBJECTIVES, TASKS  # noqa: F401

__version__ = "0.1.0"
