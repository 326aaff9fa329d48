"""Peer implementations the bench measures mmssl against.

Throughput peers, configured from the same encoder spec and task config as our objective:
Hugging Face transformers' ViTMAE / VideoMAE and lightly's NT-Xent loss. And, for the learning
row, a copy of the per-item view pipeline image tasks used before views were batched: torchvision
``transforms.v2`` on one image at a time in DataLoader workers. It is kept here so that the
reference still measures that pipeline whatever the library's augmentation becomes.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from mmssl.bench.meters import Side

NOT_INSTALLED = "peer not installed"
NO_PEER = "no peer"


# --- sizes from the spec -----------------------------------------------------------------------------

def vit_sizes(spec: dict) -> dict:
    """The shape of a ViT built from ``spec`` (``{"name": "vit", "kwargs": ...}``), as its
    constructor resolves it: width, depth, heads, MLP width, patch and input size."""
    from mmssl.encoders.vit import PRESETS

    kw = spec["kwargs"]
    dim, depth, heads = PRESETS[kw.get("size", "tiny")]
    dim, depth, heads = (kw.get(k) if kw.get(k) is not None else d
                         for k, d in (("dim", dim), ("depth", depth), ("heads", heads)))
    return {"dim": dim, "depth": depth, "heads": heads, "mlp": int(dim * kw.get("mlp_ratio", 4.0)),
            "patch": list(kw.get("patch", (4, 4))), "input_size": list(kw.get("input_size", (32, 32))),
            "channels": kw.get("channels", 3)}


def _vit_shapes(spec: dict, cfg: Any) -> dict:
    """Our MAE's encoder (from its spec) and decoder (from the task config), in transformers' names.
    The decoder's blocks are built with MLP ratio 4, as the encoder's default."""
    v = vit_sizes(spec)
    return {"hidden_size": v["dim"], "num_hidden_layers": v["depth"], "num_attention_heads": v["heads"],
            "intermediate_size": v["mlp"], "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-6, "qkv_bias": True,
            "num_channels": v["channels"], "decoder_hidden_size": cfg.objective.decoder_dim,
            "decoder_num_hidden_layers": cfg.objective.decoder_depth, "decoder_num_attention_heads": cfg.objective.decoder_heads,
            "decoder_intermediate_size": 4 * cfg.objective.decoder_dim, "norm_pix_loss": cfg.objective.norm_pix_loss,
            "attn_implementation": "sdpa"}


# --- throughput peers ----------------------------------------------------------------------------------

def tube_mask(batch: int, grid: tuple[int, int, int], keep: int, device: torch.device) -> torch.Tensor:
    """VideoMAE's tube masking as a ``bool_masked_pos``: the same ``keep`` random spatial positions
    stay visible at every time index. Returns bool (B, t * h * w), True = masked, in (t, h, w) order."""
    t, h, w = grid
    ranks = torch.rand(batch, h * w, device=device).argsort(dim=1).argsort(dim=1)  # (B, h * w)
    return (ranks >= keep).repeat(1, t)


def _vitmae_peer(objective: nn.Module, cfg: Any, data: dict, device: torch.device) -> Side:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    spec = objective.encoder.spec
    v = vit_sizes(spec)
    config = ViTMAEConfig(image_size=v["input_size"][0], patch_size=v["patch"][0], mask_ratio=cfg.objective.mask_ratio,
                          **_vit_shapes(spec, cfg))
    x = data["input"]
    return Side("transformers ViTMAEForPreTraining", ViTMAEForPreTraining(config).to(device),
                lambda m: m(pixel_values=x).loss)


def _videomae_peer(objective: nn.Module, cfg: Any, data: dict, device: torch.device) -> Side:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    spec = objective.encoder.spec
    v = vit_sizes(spec)
    (pt, p, _), (T, H, _) = v["patch"], v["input_size"]
    t, h, w = (n // q for n, q in zip(v["input_size"], v["patch"]))
    # use_mean_pooling=False keeps the encoder's final LayerNorm, as ours and VideoMAE's pretraining have it
    config = VideoMAEConfig(image_size=H, patch_size=p, num_frames=T, tubelet_size=pt, use_mean_pooling=False,
                            **_vit_shapes(spec, cfg))
    x = data["input"].transpose(1, 2).contiguous()  # (B, T, C, H, W), VideoMAE's layout, made once
    keep = round(h * w * (1 - cfg.objective.mask_ratio))  # as our tube masking rounds it
    return Side("transformers VideoMAEForPreTraining", VideoMAEForPreTraining(config).to(device),
                lambda m: m(pixel_values=x, bool_masked_pos=tube_mask(x.shape[0], (t, h, w), keep, x.device)).loss)


class _LightlySimCLR(nn.Module):
    """Our encoder and projector (copies), with lightly's NTXentLoss in place of ``nt_xent``."""

    def __init__(self, objective: nn.Module, temperature: float):
        super().__init__()
        from lightly.loss import NTXentLoss

        self.encoder, self.projector = copy.deepcopy(objective.encoder), copy.deepcopy(objective.projector)
        # one process: lightly gathers nothing, and neither does our nt_xent with a world of 1
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        h = self.encoder.pool(self.encoder.forward_features(torch.cat(views)))  # (2B, D): one pass, as ours
        z0, z1 = self.projector(h).chunk(2)
        return self.criterion(z0, z1)


def _lightly_peer(objective: nn.Module, cfg: Any, data: dict, device: torch.device) -> Side:
    views = data["views"]
    return Side("lightly NTXentLoss", _LightlySimCLR(objective, cfg.objective.temperature).to(device), lambda m: m(views))


PEERS = {"mae_image": ("transformers", _vitmae_peer), "mae_video": ("transformers", _videomae_peer),
         "simclr_image": ("lightly", _lightly_peer)}


def peer_versions() -> dict[str, str | None]:
    """Installed versions of the peers' packages (None where missing), for the report."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("transformers", "lightly"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- the per-item reference pipeline ------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PerItemSimCLRViews:
    """SimCLR's two views (arXiv:2002.05709) made one image at a time with torchvision ``v2``, as
    image tasks made them in DataLoader workers: random resized crop (area min_scale..1), flip,
    colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2, no blur (32 px),
    normalised with ImageNet's statistics. Each view reseeds the global RNG from the item's
    generator inside a fork, as that pipeline did (the fork is part of its cost).

    ``(uint8 (3, H, W), generator) -> [float32 (3, size, size)] * 2``.
    """

    def __init__(self, size: int, min_scale: float = 0.2):
        self.transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def view(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(img)

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        return [self.view(img, gen), self.view(img, gen)]


class PerItemDataset(torch.utils.data.Dataset):
    """Items of a uint8 image tensor (N, 3, H, W) through ``PerItemSimCLRViews``, each with a
    generator seeded by its index (as the library's items were)."""

    def __init__(self, images: torch.Tensor, views: PerItemSimCLRViews, seed: int = 0):
        self.images, self.views, self.seed = images, views, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return self.views(self.images[i], torch.Generator().manual_seed(self.seed * 1_000_003 + i))
