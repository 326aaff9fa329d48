"""cpc_audio: Contrastive Predictive Coding on raw waveforms (arXiv:1807.03748).

Defaults are sized for the embedded demo corpus on a CPU (a few minutes); the
paper-sized recipe for LibriSpeech is configs/cpc_librispeech.yaml.
"""
from __future__ import annotations

import dataclasses

from mmssl.objectives.cpc import CPCSettings
from mmssl.registry import TASKS
from mmssl.tasks.audio_base import AudioConfig, AudioTask


@dataclasses.dataclass(frozen=True)
class CPCAudioConfig(AudioConfig):
    max_steps: int = 250
    # The paper's Adam rate. At 1e-3, Adam moves every conv weight by about its initial size within
    # the first 25 steps: ReLUs die, the utterance-level features collapse to a few directions and
    # both probes end lower (docs/results/audio.md).
    lr: float = 2e-4
    objective: CPCSettings = CPCSettings(
        # Cosine similarity / 0.1 instead of the paper's dot product: it escapes the initial
        # plateau much sooner on a run of a few hundred steps (docs/results/audio.md).
        temperature=0.1,
    )


@TASKS.register("cpc_audio")
class CPCAudio(AudioTask):
    objective = "cpc"
    Config = CPCAudioConfig
