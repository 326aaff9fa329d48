"""Official checkpoints into mmssl's encoders: key maps for MAE / timm / transformers ViTs and torchvision ResNets.

``load_pretrained(encoder, path)`` reads a state dict (.pth / .pt / .bin / .safetensors
file, a transformers folder with config.json, or an mmssl encoder folder), recognises
its layout by its keys, renames and reshapes it into the encoder's names and loads it.
Everything that does not fit ends in one ``CheckpointError`` line naming the key.

Layouts (the ViT's are brought to timm's names first, then to mmssl's):
- timm ``VisionTransformer`` and the official MAE code (arXiv:2111.06377; same names, plus
  a decoder that is skipped): ``patch_embed.proj`` (a conv), ``cls_token``, ``pos_embed``,
  ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``.
- transformers ``ViTModel`` / ``ViTMAEModel`` (files as ``save_pretrained`` writes them,
  ``encoder.layer.i.attention.attention.query`` ..., or the in-memory names of transformers 5,
  ``layers.i.attention.q_proj`` ...), with or without the ``vit.`` prefix of the heads' models.
- torchvision ResNet: mmssl's ResNet keeps its names; ``fc`` is dropped.

The conv patch embedding (D, C, *patch) becomes a linear map over mmssl's patch layout
(p_0 .. p_{n-1}, c); q, k and v are stacked into one qkv (heads are laid out alike); the class
token's position is added to the class token (it is constant); a sin-cos position table must equal
the encoder's own, a learned one needs ``pos_embed="learned"``.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from mmssl.errors import MmsslError


class CheckpointError(MmsslError, ValueError):
    """A checkpoint that cannot be read or does not fit the encoder."""


IGNORED = re.compile(r"^(head|fc|classifier|pooler|decoder|mask_token|embeddings\.mask_token)(\.|_|$)")
HF_RENAMES = [  # transformers name -> timm name
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(q)uery\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(k)ey\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(v)alue\.", r"blocks.\1.attn.\2."),
    (r"^layers\.(\d+)\.attention\.([qkv])_proj\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
]
TIMM_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "mlp.0",
              "mlp.fc2": "mlp.2"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file or folder, unwrapped from MAE's {"model": ...} and the like."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        if (path / "encoder" / "model.safetensors").is_file():
            path = path / "encoder"  # an mmssl run directory
        index = path / "model.safetensors.index.json"
        if index.is_file():  # a sharded transformers folder
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in load_file(str(path / s)).items()}
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not files:
            raise CheckpointError(f"--init {path}: no model.safetensors or pytorch_model.bin in this folder")
        path = files[0]
    if not path.is_file():
        raise CheckpointError(f"--init {path}: no such file or folder")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        raise CheckpointError(f"--init {path}: cannot read it as a state dict ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--init {path}: not a state dict of tensors")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """ "mmssl", "timm" (also the MAE code), "transformers" or "torchvision"; unknown layouts raise."""
    keys = set(state)
    if "patch_embed.weight" in keys or any(k.startswith("vit.patch_embed.weight") for k in keys):
        return "mmssl"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if any(k.startswith(("embeddings.patch_embeddings.", "vit.embeddings.patch_embeddings.")) for k in keys):
        return "transformers"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision"
    shown = ", ".join(sorted(keys)[:4])
    raise CheckpointError(f"unknown checkpoint layout (keys {shown}, ...): expected an MAE / timm / transformers "
                          "ViT, a torchvision ResNet or an mmssl encoder")


def transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViT / ViTMAE names -> timm names, with q, k, v stacked into one qkv."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = re.sub(r"^vit\.", "", key)
        for pattern, repl in HF_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    for i in sorted({int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.attn\.q\.weight$", k))}):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"blocks.{i}.attn.{x}.{kind}", None) for x in "qkv"]
            if kind == "bias" and all(p is None for p in parts):  # qkv_bias=False: a zero bias is the same
                parts = [torch.zeros(out[f"blocks.{i}.attn.qkv.weight"].shape[0] // 3)] * 3
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)  # (3 * D, ...): q, k, v
    return out


def timm_to_vit(state: dict[str, torch.Tensor], vit: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm / MAE names -> mmssl ViT names. Returns the state dict and each new key's source key."""
    out, source, unknown = {}, {}, []
    if "fc_norm.weight" in state and "norm.weight" not in state:
        raise CheckpointError("fc_norm.weight: this checkpoint averages its tokens before its final norm (MAE "
                              "fine-tuning, timm global_pool='avg'); mmssl's ViT normalises every token, then pools")
    for key, value in state.items():
        new = None
        if key == "patch_embed.proj.weight":  # conv (D, C, *patch) -> linear (D, (*patch, C))
            new, value = "patch_embed.weight", value.movedim(1, -1).reshape(value.shape[0], -1)
        elif key == "patch_embed.proj.bias":
            new = "patch_embed.bias"
        elif key.startswith("norm."):
            new = key
        elif m := re.match(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", key):
            new = f"blocks.{m.group(1)}.{TIMM_BLOCK[m.group(2)]}.{m.group(3)}"
        elif key in ("cls_token", "pos_embed") or IGNORED.match(key):
            continue
        else:
            unknown.append(key)
            continue
        out[new], source[new] = value, key
    if unknown:
        raise CheckpointError(f"{unknown[0]}: mmssl's ViT has no place for this key ({len(unknown)} such keys; "
                              "layer scale, qk-norm and other ViT variants are not supported)")
    _positions(state, vit, out, source)
    return out, source


def _positions(state: dict[str, torch.Tensor], vit: nn.Module, out: dict, source: dict) -> None:
    """The class token and the position table: the class token's position (a constant) is folded into the
    token; a learned table is copied, a sin-cos one must be the encoder's own table."""
    from mmssl.encoders.vit import sincos_pos_embed

    cls, pos = state.get("cls_token"), state.get("pos_embed")
    if cls is not None and vit.cls_token is None:
        raise CheckpointError("cls_token: the checkpoint has a class token and the encoder has none; build the "
                              "ViT with cls_token=true (task configs: encoder.vit.cls_token=true)")
    if pos is not None:
        pos = pos.reshape(1, -1, pos.shape[-1])
        if pos.shape[-1] != vit.embed_dim:
            raise CheckpointError(f"pos_embed: shape {list(pos.shape)} in the checkpoint, width {vit.embed_dim} in "
                                  "the encoder; build the encoder with the checkpoint's sizes")
        if cls is not None and pos.shape[1] in (vit.num_patches + 1, math.isqrt(pos.shape[1] - 1) ** 2 + 1):
            cls, pos = cls + pos[:, :1], pos[:, 1:]  # timm / transformers give the class token a position
        if vit.pos_kind == "learned":
            out["pos_embed"], source["pos_embed"] = pos, "pos_embed"
        else:
            n = pos.shape[1]
            grid = vit.grid if n == vit.num_patches else (math.isqrt(n),) * 2
            own = sincos_pos_embed(grid, vit.embed_dim, vit.pos_layout)[None] if math.prod(grid) == n else None
            if own is None or own.shape != pos.shape or not torch.allclose(pos.float(), own, atol=1e-5):
                raise CheckpointError(f"pos_embed: the checkpoint's position table {list(pos.shape)} is not this "
                                      f"encoder's fixed sin-cos table (pos_layout={vit.pos_layout}); for a learned "
                                      "table build the ViT with pos_embed=learned (task configs: encoder.vit.pos_embed=learned)")
    if cls is not None:
        out["cls_token"], source["cls_token"] = cls, "cls_token"


def convert_state_dict(state: dict[str, torch.Tensor], encoder: nn.Module) -> tuple[nn.Module, dict, dict]:
    """A checkpoint's tensors in ``encoder``'s names: (the module to load into, state dict, sources)."""
    from mmssl.encoders.vit import ViT

    layout = detect_layout(state)
    vit = encoder if isinstance(encoder, ViT) else getattr(encoder, "vit", None)
    if layout == "mmssl" or layout == "torchvision":
        # torchvision's classifier, and its layer4 where the encoder drops it (out_stride=8), have no place
        has_layer4 = any(k.startswith("layer4.") for k in encoder.state_dict())
        skip = ("fc.",) if has_layer4 else ("fc.", "layer4.")
        out = {k: v for k, v in state.items() if layout == "mmssl" or not k.startswith(skip)}
        return encoder, out, {k: k for k in out}
    if not isinstance(vit, ViT):
        raise CheckpointError(f"a {layout} ViT checkpoint cannot initialise a {type(encoder).__name__} encoder")
    if layout == "transformers":
        state = transformers_to_timm(state)
    out, source = timm_to_vit(state, vit)
    return vit, out, source


def load_pretrained(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load an MAE / timm / transformers ViT, torchvision ResNet or mmssl checkpoint into ``encoder`` in place.

    Every tensor must fit: a missing key, an extra key or a shape that differs raises
    ``CheckpointError`` naming it (heads, poolers and MAE decoders are skipped).
    """
    module, state, source = convert_state_dict(read_state_dict(path), encoder)
    target = module.state_dict()
    for key, value in state.items():
        if key not in target:
            raise CheckpointError(f"{source[key]}: the encoder has no {key} (another depth or architecture?)")
        if value.shape != target[key].shape:
            raise CheckpointError(f"{source[key]}: shape {list(value.shape)} in the checkpoint, {list(target[key].shape)}"
                                  f" in the encoder ({key}); build the encoder with the checkpoint's sizes")
    missing = [k for k in target if k not in state]
    if missing:
        raise CheckpointError(f"{missing[0]}: the checkpoint has no value for this encoder key "
                              f"({len(missing)} missing)")
    module.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()})
    return encoder


def init_objective(objective: nn.Module, path: str | Path) -> None:
    """``--init``: load ``path`` into the objective's encoder and into the copies of it that target
    networks (MoCo's momentum encoder, BYOL's target) made when the objective was built."""
    encoder = objective.export_encoder()
    load_pretrained(encoder, path)
    state = encoder.state_dict()
    for module in objective.modules():
        if module is not encoder and type(module) is type(encoder) and getattr(module, "spec", None) == encoder.spec:
            module.load_state_dict(state)
