"""A fixed Sobel front end: RGB -> grayscale -> the two Sobel gradients, read by an image encoder.

DeepCluster (Caron et al., arXiv:1807.05520) puts "a fixed linear transformation based on Sobel
filters to remove color and increase local contrast" in front of its network (the authors' code:
``sobel=True``): without it k-means groups the images by colour, the dominant cue of a randomly
initialised network, and the classifier learns colour. The filter is fixed: its weights are
buffers, not parameters, so no optimiser, weight decay or gradient touches them.

It reads the normalised RGB every image task feeds (``(x - mean) / std``), so the probes, the
random-encoder baseline and a saved encoder need nothing else. The filter first undoes the
normalisation, since the luma of normalised channels would weigh them by 1 / std. Two choices
differ from the authors' code, which averages the normalised channels and pads with zeros:

* grayscale is the ITU-R 601 luma of the RGB (the weights the views' grayscale uses), so two
  colours of equal luma give the same gray and no edge between them;
* the border is padded by replicating its pixels: zero padding would draw an edge around every
  image whose strength is its border's brightness, a colour cue the filter is there to remove.

The kernels are the authors' (x: left minus right, y: top minus bottom), unscaled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.modalities.vision.augment import MEAN, STD
from mmssl.modalities.vision.batched import LUMA  # the views' grayscale weights (ITU-R 601-2)
from mmssl.registry import ENCODERS

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
# The encoders whose constructor takes ``channels``: the filter hands them its 2 gradient channels.
WRAPS = ("convnet", "resnet", "vit")


@ENCODERS.register("sobel")
class Sobel(nn.Module):
    """Normalised RGB (B, 3, H, W) -> Sobel gradients (B, 2, H, W) -> the inner encoder's tokens (B, N, D).

    Args:
        encoder: the registry spec of the image encoder that reads the gradients,
            ``{"name": "convnet" | "resnet" | "vit", "kwargs": {...}}``; it is built with 2 input
            channels (``kwargs`` may leave ``channels`` out, or give 2).
        mean, std: the per-channel normalisation of the RGB input, undone before the grayscale.
    """

    def __init__(self, encoder: dict, mean: tuple[float, ...] | list[float] = MEAN,
                 std: tuple[float, ...] | list[float] = STD):
        super().__init__()
        name, kwargs = encoder.get("name"), dict(encoder.get("kwargs", {}))
        if name not in WRAPS:
            raise ValueError(f"the sobel encoder wraps an image encoder that takes input channels "
                             f"({', '.join(WRAPS)}), not '{name}'")
        if kwargs.get("channels", 2) != 2:
            raise ValueError(f"the sobel encoder feeds its {name} 2 channels (the x and y gradients); its spec "
                             f"asks for {kwargs['channels']}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"the sobel encoder reads RGB: mean and std need 3 values, std positive; got "
                             f"{list(mean)} and {list(std)}")
        self.encoder = ENCODERS.build(name, **{**kwargs, "channels": 2})
        self.embed_dim = self.encoder.embed_dim
        # Not persistent: they follow from the constructor's arguments, which the saved spec holds, so
        # the state dict is the inner encoder's alone.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)
        sobel_x = torch.tensor(SOBEL_X)
        self.register_buffer("kernels", torch.stack([sobel_x, sobel_x.T])[:, None], persistent=False)  # (2, 1, 3, 3)

    def gradients(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB (B, 3, H, W) -> (B, 2, H, W): the x and y Sobel gradients of its luma in [0, 1]."""
        gray = ((x.float() * self.std + self.mean) * self.luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        return F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), self.kernels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the inner encoder's tokens (B, N, D) of the gradients."""
        return self.encoder.forward_features(self.gradients(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D), as the inner encoder pools."""
        return self.encoder.pool(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
