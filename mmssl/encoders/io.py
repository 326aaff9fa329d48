"""Save and load a trained encoder without the task that trained it.

``DIR/encoder/model.safetensors`` holds the weights and ``DIR/encoder/config.json``
the registry spec (name + constructor kwargs) plus metadata such as the
modality and sample rate, so ``load_encoder(DIR)`` rebuilds the module alone.

An encoder class may name ``legacy_kwargs``: constructor arguments added after
encoders of that class were first saved, with the value that reproduces those
files (the ViT's ``pos_layout``). ``save_encoder`` always writes them out, and
``load_encoder`` fills them in where a config.json predates them, so an old file
keeps its features when a default changes. Both reach into a wrapper's inner encoder (the
``encoder`` spec that ``sobel`` and ``patch_grid`` take), so a wrapped ViT keeps its layout too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from mmssl.registry import ENCODERS


def save_encoder(encoder: nn.Module, directory: str | Path, **meta: Any) -> Path:
    """Write ``encoder`` (built through ``ENCODERS.build``) to ``directory``."""
    spec = getattr(encoder, "spec", None)
    if spec is None:
        raise ValueError("only encoders built with ENCODERS.build can be saved (their spec is unknown)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = _spec_with_legacy_values(spec, encoder)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"encoder": spec, **meta}, indent=2))
    return directory


def _spec_with_legacy_values(spec: dict[str, Any], encoder: nn.Module) -> dict[str, Any]:
    """``spec`` with the values ``encoder`` was built with for each of its class's legacy kwargs,
    and the same for the inner encoder of a wrapper (its ``encoder`` kwarg and attribute)."""
    kwargs = dict(spec.get("kwargs", {}))
    for key in getattr(type(encoder), "legacy_kwargs", {}):
        kwargs.setdefault(key, getattr(encoder, key))
    if isinstance(kwargs.get("encoder"), dict) and isinstance(getattr(encoder, "encoder", None), nn.Module):
        kwargs["encoder"] = _spec_with_legacy_values(kwargs["encoder"], encoder.encoder)
    return {**spec, "kwargs": kwargs}


def _spec_with_legacy_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each legacy kwarg it lacks set to the value files without it were made with,
    also in a wrapper's inner ``encoder`` spec."""
    kwargs = {**getattr(ENCODERS.get(spec["name"]), "legacy_kwargs", {}), **spec.get("kwargs", {})}
    if isinstance(kwargs.get("encoder"), dict):
        kwargs["encoder"] = _spec_with_legacy_defaults(kwargs["encoder"])
    return {**spec, "kwargs": kwargs}


def encoder_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if (path / "encoder" / "config.json").is_file():
        path = path / "encoder"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no saved encoder in {path} (expected config.json and model.safetensors)")
    meta = json.loads((path / "config.json").read_text())
    meta["path"] = str(path)
    return meta


def build_encoder(spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised encoder of the architecture ``spec`` describes."""
    return ENCODERS.build(spec["name"], **spec.get("kwargs", {}))


def load_encoder(path: str | Path, pretrained: bool = True) -> nn.Module:
    """Rebuild the encoder saved in a run directory (or its ``encoder/`` folder).

    With ``pretrained=False`` the same architecture is returned with fresh
    weights: the random-encoder baseline of every evaluation.
    """
    meta = encoder_config(path)
    encoder = build_encoder(_spec_with_legacy_defaults(meta["encoder"]))
    if pretrained:
        encoder.load_state_dict(load_file(str(Path(meta["path"]) / "model.safetensors")))
    encoder.meta = {k: v for k, v in meta.items() if k != "encoder"}
    return encoder.eval()
