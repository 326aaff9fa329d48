"""cpc_audio: Contrastive Predictive Coding on raw waveforms (arXiv:1807.03748).

Defaults are sized for the embedded demo corpus on a CPU (a few minutes); the
paper-sized recipe for LibriSpeech is configs/cpc_librispeech.yaml.
"""
from __future__ import annotations

import dataclasses

from mmssl.encoders.io import build_encoder
from mmssl.objectives.cpc import CPC
from mmssl.registry import TASKS
from mmssl.tasks.audio_common import AudioConfig, AudioTask, probe_splits  # noqa: F401  (probe_splits: API)


@dataclasses.dataclass(frozen=True)
class CPCAudioConfig(AudioConfig):
    max_steps: int = 250  # about 2.5 minutes on 2 CPU cores
    # The paper's Adam rate. At 1e-3, Adam moves every conv weight by about its initial size within
    # the first 25 steps: ReLUs die, the utterance-level features collapse to a few directions and
    # both probes end lower (README).
    lr: float = 2e-4
    prediction_steps: int = 12
    num_negatives: int = 128
    negatives_from: str = "batch"  # batch | sequence | others
    temperature: float | None = 0.1  # cosine similarity / temperature; none: the paper's dot product


@TASKS.register("cpc_audio")
class CPCAudio(AudioTask):
    name = "cpc_audio"
    encoder = "cpc_conv + gru"
    objective = "cpc"
    Config = CPCAudioConfig

    def build_objective(self, cfg: CPCAudioConfig) -> CPC:
        return CPC(build_encoder(self.encoder_spec(cfg)), cfg.prediction_steps, cfg.num_negatives, cfg.negatives_from,
                   cfg.temperature)
