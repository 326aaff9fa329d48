"""The ``encoder`` section of a task config: which encoder (``encoder.name``) and the settings of
each encoder the task offers, one sub-section per encoder (``encoder.vit.dim=192``,
``encoder.convnet.widths=32,64``), so every key keeps one type whichever encoder is chosen.

The settings classes belong to the encoder modules, with those modules' defaults; a task config
sets its demo's values in its ``encoder`` default, and its ``encoder_spec`` builds the registry
spec from the chosen sub-section.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from mmssl.config import ConfigError
from mmssl.encoders.context import CPCEncoderSettings
from mmssl.encoders.convnet import ConvNetSettings
from mmssl.encoders.dense import DenseConvNetSettings
from mmssl.encoders.resnet import ResNetSettings
from mmssl.encoders.vit import ViTSettings


@dataclasses.dataclass(frozen=True)
class EncoderSection:
    """``name`` picks one of the sub-sections a subclass declares (its fields whose values are settings
    dataclasses); other plain fields are options that apply whichever encoder is chosen."""

    name: str = ""
    labels: ClassVar[dict[str, str]] = {}  # how ``mmssl tasks`` shows an encoder, where not by its key

    def offered(self) -> list[str]:
        """The encoders this section has settings for, in declaration order."""
        return [f.name for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))]

    def describe(self) -> str:
        """The encoder column of ``mmssl tasks``: the choices, as the labels show them."""
        return " | ".join(self.labels.get(name, name) for name in self.offered())

    def chosen(self, task: str) -> Any:
        """The settings of the encoder ``name`` picks; a name the task does not offer is one line."""
        offered = self.offered()
        if self.name not in offered:
            names = " or ".join([", ".join(offered[:-1]), offered[-1]] if len(offered) > 1 else offered)
            raise ConfigError(f"encoder.name must be {names} for {task}, not '{self.name}'")
        return getattr(self, self.name)


@dataclasses.dataclass(frozen=True)
class ImageEncoders(EncoderSection):
    name: str = "convnet"
    # A fixed Sobel filter in front of the encoder (mmssl.encoders.sobel): it reads the gradients of
    # the grayscale image, not the colours. DeepCluster's paper uses it; off elsewhere.
    sobel: bool = False
    convnet: ConvNetSettings = ConvNetSettings()
    vit: ViTSettings = ViTSettings()
    resnet: ResNetSettings = ResNetSettings()

    def describe(self) -> str:
        return f"{super().describe()} (Sobel input)" if self.sobel else super().describe()


@dataclasses.dataclass(frozen=True)
class TileEncoders(EncoderSection):
    """Conv nets only: the patch-based pretext tasks (jigsaw, relative position), since a ViT's positions
    are laid out for whole images, not for patches a third their side; and the context encoder, whose
    decoder up-convolves the encoder's feature map."""

    name: str = "convnet"
    convnet: ConvNetSettings = ConvNetSettings()
    resnet: ResNetSettings = ResNetSettings(small_stem=True)


@dataclasses.dataclass(frozen=True)
class VideoEncoders(EncoderSection):
    """Stride-8 frame encoders for dense correspondence."""

    name: str = "dense_convnet"
    dense_convnet: DenseConvNetSettings = DenseConvNetSettings()
    resnet: ResNetSettings = ResNetSettings()


@dataclasses.dataclass(frozen=True)
class AudioEncoders(EncoderSection):
    name: str = "cpc"
    cpc: CPCEncoderSettings = CPCEncoderSettings()
    labels: ClassVar[dict[str, str]] = {"cpc": "cpc_conv + gru"}


@dataclasses.dataclass(frozen=True)
class ViTEncoder(EncoderSection):
    """The masked-autoencoder tasks' section: masking drops tokens, which only a ViT reads."""

    name: str = "vit"
    vit: ViTSettings = ViTSettings()


# The demos' ViT, 128 wide with 4 blocks of 4 heads: a few CPU minutes per run on 32 px images,
# 64 px video and 1.28 s spectrograms (configs/ holds the ViT-B recipes).
DEMO_VIT = ViTSettings(dim=128, depth=4, heads=4)

# The flat keys the encoder settings had before they moved into ``encoder`` (TrainConfig.renamed).
BACKBONE = "encoder.name (a ResNet's depth: encoder.resnet.arch=resnet18 | resnet50)"
VIT_KEYS = {"vit_size": "encoder.vit.size", "vit_dim": "encoder.vit.dim", "vit_depth": "encoder.vit.depth",
            "vit_heads": "encoder.vit.heads"}
