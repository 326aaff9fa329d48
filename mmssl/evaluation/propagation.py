"""Semi-supervised label propagation by feature affinities, the protocol of CRW (Jabri et al.,
arXiv:2006.14613; its code: github.com/ajabri/videowalk, ``test.py``), also used for DAVIS by
colorization tracking (arXiv:1806.09594), UVC and DINO.

For each target frame t = 1..T-1, every position of the target's L2-normalised feature map looks
at a context of frame 0 (its given labels) and the ``context`` most recent frames (their predicted
soft labels), the recent ones restricted to a local disk of ``radius`` feature cells around the
same position. Its ``topk`` most similar context positions vote with weights
softmax(similarity / temperature), and the weighted sum of their soft labels is its own soft
label, which later frames copy in turn.

Two protocols (``protocol=``):

- ``"crw"`` (the default): CRW's test-time propagation as published.
  First-frame labels reach the feature grid by bilinear resizing of their one-hot maps. Frame 0
  is a "long memory" seen whole, not restricted to the radius. The recent context is the
  ``context`` frames t-context..t-1, where indices below 0 are copies of frame 0 (CRW pads the
  video with copies of its first frame), so early frames see frame 0 several times: its
  positions can fill several of the top-k places. The neighbourhood is distance < radius.
- ``"legacy"``: mmssl's earlier variant, kept for comparison with results made with it. Area
  averaging of the first-frame one-hot maps (a cell's soft label is the fraction of its pixels
  each object covers, so a thin object keeps some mass where bilinear resizing samples past it
  when shrinking by 8); frame 0 restricted to the radius like every context frame (memory bounded
  by the disk rather than the frame); frame 0 once plus frames 1..t-1, no padding; distance <=
  radius (with radius 12 the inclusive disk adds the 4 cells at distance exactly 12).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

Features = torch.Tensor | Callable[[int], torch.Tensor]


PROTOCOLS = ("crw", "legacy")


def _disk_mask(tile: int, r: int, radius: float, device: torch.device, inclusive: bool) -> torch.Tensor:
    """Which key cells of a (tile + 2r)^2 region lie within ``radius`` of each of the tile's cells
    (distance <= radius when ``inclusive``, else < radius).

    Returns bool (tile^2, (tile + 2r)^2): row qy * tile + qx, column ky * R + kx, where the region's
    cell (ky, kx) sits at offset (ky - r - qy, kx - r - qx) from the query cell (qy, qx).
    """
    q = torch.arange(tile, device=device)
    k = torch.arange(tile + 2 * r, device=device)
    d = (k[None, :] - r - q[:, None]).float() ** 2  # (tile, R): squared offset along one axis
    d2 = d[:, None, :, None] + d[None, :, None, :]  # (qy, qx, ky, kx)
    inside = d2 <= radius * radius if inclusive else d2 < radius * radius
    return inside.flatten(2).flatten(0, 1)


def _frame_soft_labels(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    disk: torch.Tensor,
    inside: torch.Tensor,
    tile: int,
    topk: int,
    temperature: float,
    whole: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Soft labels of one target frame from its context, one tile of target cells at a time.

    Args:
        q: (D, hp, wp) normalised target features, hp and wp whole tiles.
        keys: (n, D, hp + 2r, wp + 2r) the context's normalised features, zero-padded by r.
        values: (n, K+1, hp + 2r, wp + 2r) the context's soft labels, padded alike.
        disk: (tile^2, R^2) which cells of a tile's (R x R, R = tile + 2r) key region lie within the
            radius of each of its cells (see ``_disk_mask``).
        inside: bool (hp + 2r, wp + 2r), True on the real cells of the padded key grid.
        whole: optional (keys (D, M), values (K+1, M)) of context positions every target cell
            sees, whatever the radius (CRW's long memory: frame 0's M = h * w cells).
    Returns:
        (K+1, hp, wp) soft labels; cells of the padding are meaningless.
    """
    D, hp, wp = q.shape
    n, C = values.shape[:2]
    R = tile + keys.shape[-1] - wp  # keys are padded by r on each side
    k = min(topk, n * R * R + (whole[0].shape[1] if whole is not None else 0))
    soft = torch.empty(C, hp, wp, device=q.device)
    for y0 in range(0, hp, tile):
        for x0 in range(0, wp, tile):
            qt = q[:, y0 : y0 + tile, x0 : x0 + tile].reshape(D, -1).T  # (tile^2, D)
            kt = keys[:, :, y0 : y0 + R, x0 : x0 + R].transpose(0, 1).reshape(D, -1)  # (D, n R^2)
            aff = (qt @ kt).view(-1, n, R * R)  # (tile^2, n, R^2)
            allowed = disk & inside[y0 : y0 + R, x0 : x0 + R].reshape(1, -1)  # (tile^2, R^2)
            aff.masked_fill_(~allowed[:, None], float("-inf"))
            aff = aff.flatten(1)
            vt = values[:, :, y0 : y0 + R, x0 : x0 + R].permute(0, 2, 3, 1).reshape(-1, C)  # (n R^2, K+1)
            if whole is not None:
                aff = torch.cat([aff, qt @ whole[0]], 1)  # (tile^2, n R^2 + M)
                vt = torch.cat([vt, whole[1].T], 0)
            sim, idx = aff.topk(k, dim=1)  # (tile^2, k) over all context frames at once
            weight = torch.softmax(sim / temperature, dim=1)
            votes = (weight[..., None] * vt[idx]).sum(1)  # (tile^2, K+1)
            soft[:, y0 : y0 + tile, x0 : x0 + tile] = votes.T.reshape(C, tile, tile)
    return soft


@torch.no_grad()
def propagate(
    features: Features,
    first_labels: torch.Tensor,
    *,
    context: int = 20,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    out_size: tuple[int, int] | None = None,
    num_frames: int | None = None,
    tile: int = 16,
    protocol: str = "crw",
) -> torch.Tensor:
    """Propagate the first frame's object ids through a video.

    Args:
        features: (T, D, h, w) dense features of every frame, or a callable frame index ->
            (D, h, w) so that a long video's features need not all be in memory (then pass
            ``num_frames``). They are L2-normalised along D here.
        first_labels: int (H, W) object ids 0..K of frame 0 (0 is background).
        context: how many of the most recent frames join frame 0 as context.
        topk: how many context positions vote for each target position.
        radius: neighbourhood radius in feature cells (Euclidean; ``crw``: distance < radius,
            ``legacy``: <=, so 0 copies from the same cell only; ``math.inf`` is the whole frame,
            affordable on small grids only, as the cost grows with (tile + 2 radius)^2).
        temperature: softmax temperature over the top-k similarities.
        out_size: (H, W) of the output; by default that of ``first_labels``.
        num_frames: T, required when ``features`` is a callable.
        tile: target cells are processed in tile x tile blocks; see the memory note below.
        protocol: ``crw`` (the published protocol) or ``legacy``; see the module docstring.
    Returns:
        int64 (T, *out_size) predicted ids, on the CPU whatever device the features are on.
        Frame 0 is ``first_labels`` (resized by nearest neighbour if ``out_size`` differs).

    Memory: the context is kept in a ring buffer of ``context`` (crw; 1 + ``context`` for
    legacy) zero-padded feature maps and their soft labels, and each tile of target cells meets
    only the (tile + 2r)^2 region of keys around it, r = floor(radius), besides frame 0 whole
    under crw, so nothing grows with T. At 480p and stride 8 (h, w = 60, 107; D = 256), context
    20, radius 12, tile 16: the buffer holds 21 x 256 x 88 x 136 floats = 257 MB; one tile's
    gathered keys and its affinities (256 queries x 21 frames x 40^2 cells) take 34 MB each, and
    crw's frame-0 affinities 256 x 6420 cells 7 MB; the peak is about 330 MB of tensors beyond the
    (T, H, W) output, whatever the video's length.
    """
    labels0 = first_labels
    if labels0.ndim != 2 or labels0.dtype.is_floating_point or int(labels0.min()) < 0:
        raise ValueError(f"first_labels must be integer ids >= 0 of shape (H, W), "
                         f"got {labels0.dtype} {tuple(labels0.shape)}")
    H, W = out_size if out_size is not None else labels0.shape
    frames = soft_labels(features, labels0, context=context, topk=topk, radius=radius, temperature=temperature,
                         num_frames=num_frames, tile=tile, protocol=protocol)
    T = next(frames)
    out = torch.empty(T, H, W, dtype=torch.long)
    out[0] = F.interpolate(labels0[None, None].float(), size=(H, W), mode="nearest")[0, 0].long().cpu()
    for t, soft in enumerate(frames, start=1):
        up = F.interpolate(soft[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # (K+1, H, W)
        out[t] = up.argmax(0).cpu()
    return out


@torch.no_grad()
def soft_labels(
    features: Features,
    first_labels: torch.Tensor,
    *,
    context: int = 20,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    num_frames: int | None = None,
    tile: int = 16,
    protocol: str = "crw",
) -> Iterator[Any]:
    """The propagation's soft labels on the feature grid, frame by frame (see ``propagate``).

    Yields T first, then for t = 1..T-1 the float (K+1, h, w) soft labels of frame t (on the
    features' device), each the votes of its context.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not '{protocol}'")
    if context < 0 or topk < 1 or temperature <= 0 or radius < 0 or tile < 1:
        raise ValueError(f"need context >= 0, topk >= 1, temperature > 0, radius >= 0 and tile >= 1; got "
                         f"{context}, {topk}, {temperature}, {radius} and {tile}")
    if isinstance(features, torch.Tensor):
        if features.ndim != 4:
            raise ValueError(f"expected features (T, D, h, w), got shape {tuple(features.shape)}")
        frame_features, T = (lambda i: features[i]), features.shape[0]
    else:
        if num_frames is None:
            raise ValueError("pass num_frames with a features callable")
        frame_features, T = features, int(num_frames)
    crw = protocol == "crw"
    if crw and context < 1:
        raise ValueError("the crw protocol needs context >= 1 (the recent frames, padded with frame 0)")
    yield T

    f0 = frame_features(0)
    D, h, w = f0.shape
    device = f0.device
    labels0 = first_labels.to(device).long()
    num_classes = int(labels0.max()) + 1
    r = math.floor(min(radius, max(h, w) - 1))  # a larger radius already reaches every cell
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile  # target grid rounded up to whole tiles
    disk = _disk_mask(tile, r, radius, device, inclusive=not crw)
    inside = torch.zeros(hp + 2 * r, wp + 2 * r, dtype=torch.bool, device=device)
    inside[r : r + h, r : r + w] = True

    def padded(x: torch.Tensor) -> torch.Tensor:  # (C, h, w) -> (C, hp + 2r, wp + 2r), zeros outside
        return F.pad(x, (r, r + wp - w, r, r + hp - h))

    def normalised(x: torch.Tensor) -> torch.Tensor:
        if x.shape != (D, h, w):
            raise ValueError(f"frame features must all be ({D}, {h}, {w}), got {tuple(x.shape)}")
        return F.normalize(x.to(device).float(), dim=0)

    # Frame 0's soft labels on the feature grid. (K+1, h, w)
    onehot = F.one_hot(labels0, num_classes).permute(2, 0, 1).float()[None]
    if crw:
        soft0 = F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False)[0]
    else:
        soft0 = F.adaptive_avg_pool2d(onehot, (h, w))[0]
    k0 = normalised(f0)

    # Ring buffer of the recent context, filled so the used slots are always a prefix; the order
    # of slots does not matter (top-k and the softmax treat the context as one set).
    # crw: ``context`` slots, all frame 0 at first (the padding); each new frame replaces the oldest.
    # legacy: slot 0 holds frame 0 for good, slots 1..context the most recent frames.
    slots = context if crw else 1 + context
    keys = torch.zeros(slots, D, hp + 2 * r, wp + 2 * r, device=device)
    values = torch.zeros(slots, num_classes, hp + 2 * r, wp + 2 * r, device=device)
    if crw:
        keys[:], values[:] = padded(k0), padded(soft0)
        used, next_slot, first = slots, 0, 0
        whole = (k0.flatten(1), soft0.flatten(1))  # the long memory: frame 0, unrestricted
    else:
        keys[0], values[0] = padded(k0), padded(soft0)
        used, next_slot, first = 1, 1, 1
        whole = None

    for t in range(1, T):
        q = F.pad(normalised(frame_features(t)), (0, wp - w, 0, hp - h))  # (D, hp, wp)
        soft = _frame_soft_labels(q, keys[:used], values[:used], disk, inside, tile, topk, temperature,
                                  whole)[:, :h, :w]
        yield soft
        if context > 0:  # the soft labels, not the argmax, become context
            keys[next_slot], values[next_slot] = padded(q[:, :h, :w]), padded(soft)
            used = min(used + 1, slots)
            next_slot = first + (next_slot - first + 1) % context
