"""Semi-supervised label propagation by feature affinities, the protocol of CRW (Jabri et al.,
arXiv:2006.14613; its code: github.com/ajabri/videowalk, ``test.py``), also used for DAVIS by
colorization tracking (arXiv:1806.09594), UVC and DINO.

For each target frame t = 1..T-1, every position of the target's L2-normalised feature map looks
at a context of frame 0 (its given labels) and the ``context`` most recent frames (their predicted
soft labels), restricted to a local disk of ``radius`` feature cells around the same position. Its
``topk`` most similar context positions vote with weights softmax(similarity / temperature), and
the weighted sum of their soft labels is its own soft label, which later frames copy in turn.

Choices, and where they differ from CRW's code:
- Neighbourhood: Euclidean distance <= radius in feature cells, applied to every context frame.
  CRW uses distance < radius and leaves frame 0 unrestricted; with the default radius 12 the
  inclusive disk adds only the 4 cells at distance exactly 12, and restricting frame 0 bounds the
  memory by the disk rather than the frame.
- Early frames: CRW pads the video with ``context`` copies of frame 0, so for t <= context frame 0
  sits in the context several times; here the context is frame 0 once plus the frames 1..t-1.
- First-frame labels reach the feature grid by area averaging of their one-hot maps: each cell's
  soft label is the fraction of its pixels each object covers, so a thin object keeps some mass.
  CRW resizes the one-hot maps bilinearly, which samples rather than averages when shrinking by 8.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Features = torch.Tensor | Callable[[int], torch.Tensor]


def _disk_mask(tile: int, r: int, radius: float, device: torch.device) -> torch.Tensor:
    """Which key cells of a (tile + 2r)^2 region lie within ``radius`` of each of the tile's cells.

    Returns bool (tile^2, (tile + 2r)^2): row qy * tile + qx, column ky * R + kx, where the region's
    cell (ky, kx) sits at offset (ky - r - qy, kx - r - qx) from the query cell (qy, qx).
    """
    q = torch.arange(tile, device=device)
    k = torch.arange(tile + 2 * r, device=device)
    d = (k[None, :] - r - q[:, None]).float() ** 2  # (tile, R): squared offset along one axis
    d2 = d[:, None, :, None] + d[None, :, None, :]  # (qy, qx, ky, kx)
    return (d2 <= radius * radius).flatten(2).flatten(0, 1)


def _frame_soft_labels(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    disk: torch.Tensor,
    inside: torch.Tensor,
    tile: int,
    topk: int,
    temperature: float,
) -> torch.Tensor:
    """Soft labels of one target frame from its context, one tile of target cells at a time.

    Args:
        q: (D, hp, wp) normalised target features, hp and wp whole tiles.
        keys: (n, D, hp + 2r, wp + 2r) the context's normalised features, zero-padded by r.
        values: (n, K+1, hp + 2r, wp + 2r) the context's soft labels, padded alike.
        disk: (tile^2, R^2) which cells of a tile's (R x R, R = tile + 2r) key region lie within the
            radius of each of its cells (see ``_disk_mask``).
        inside: bool (hp + 2r, wp + 2r), True on the real cells of the padded key grid.
    Returns:
        (K+1, hp, wp) soft labels; cells of the padding are meaningless.
    """
    D, hp, wp = q.shape
    n, C = values.shape[:2]
    R = tile + keys.shape[-1] - wp  # keys are padded by r on each side
    k = min(topk, n * R * R)
    soft = torch.empty(C, hp, wp, device=q.device)
    for y0 in range(0, hp, tile):
        for x0 in range(0, wp, tile):
            qt = q[:, y0 : y0 + tile, x0 : x0 + tile].reshape(D, -1).T  # (tile^2, D)
            kt = keys[:, :, y0 : y0 + R, x0 : x0 + R].transpose(0, 1).reshape(D, -1)  # (D, n R^2)
            aff = (qt @ kt).view(-1, n, R * R)  # (tile^2, n, R^2)
            allowed = disk & inside[y0 : y0 + R, x0 : x0 + R].reshape(1, -1)  # (tile^2, R^2)
            aff.masked_fill_(~allowed[:, None], float("-inf"))
            sim, idx = aff.flatten(1).topk(k, dim=1)  # (tile^2, k) over all context frames at once
            weight = torch.softmax(sim / temperature, dim=1)
            vt = values[:, :, y0 : y0 + R, x0 : x0 + R].permute(0, 2, 3, 1).reshape(-1, C)  # (n R^2, K+1)
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
) -> torch.Tensor:
    """Propagate the first frame's object ids through a video.

    Args:
        features: (T, D, h, w) dense features of every frame, or a callable frame index ->
            (D, h, w) so that a long video's features need not all be in memory (then pass
            ``num_frames``). They are L2-normalised along D here.
        first_labels: int (H, W) object ids 0..K of frame 0 (0 is background).
        context: how many of the most recent frames join frame 0 as context.
        topk: how many context positions vote for each target position.
        radius: neighbourhood radius in feature cells (Euclidean, inclusive: 0 copies from the
            same cell only; ``math.inf`` is the whole frame, affordable on small grids only, as the
            cost grows with (tile + 2 radius)^2).
        temperature: softmax temperature over the top-k similarities.
        out_size: (H, W) of the output; by default that of ``first_labels``.
        num_frames: T, required when ``features`` is a callable.
        tile: target cells are processed in tile x tile blocks; see the memory note below.
    Returns:
        int64 (T, *out_size) predicted ids, on the CPU whatever device the features are on.
        Frame 0 is ``first_labels`` (resized by nearest neighbour if ``out_size`` differs).

    Memory: the context is kept in a ring buffer of 1 + ``context`` zero-padded feature maps and
    their soft labels, and each tile of target cells meets only the (tile + 2r)^2 region of keys
    around it, r = floor(radius), so nothing grows with T or with the square of the frame area.
    At 480p and stride 8 (h, w = 60, 107; D = 256), context 20, radius 12, tile 16: the buffer
    holds 21 x 256 x 88 x 136 floats = 257 MB; one tile's gathered keys and its affinities
    (256 queries x 21 frames x 40^2 cells) take 34 MB each; the peak is about 330 MB of tensors
    beyond the (T, H, W) output, whatever the video's length.
    """
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
    if first_labels.ndim != 2 or first_labels.dtype.is_floating_point or int(first_labels.min()) < 0:
        raise ValueError(f"first_labels must be integer ids >= 0 of shape (H, W), "
                         f"got {first_labels.dtype} {tuple(first_labels.shape)}")
    H, W = out_size if out_size is not None else first_labels.shape

    f0 = frame_features(0)
    D, h, w = f0.shape
    device = f0.device
    labels0 = first_labels.to(device).long()
    num_classes = int(labels0.max()) + 1
    r = math.floor(min(radius, max(h, w) - 1))  # a larger radius already reaches every cell
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile  # target grid rounded up to whole tiles
    disk = _disk_mask(tile, r, radius, device)
    inside = torch.zeros(hp + 2 * r, wp + 2 * r, dtype=torch.bool, device=device)
    inside[r : r + h, r : r + w] = True

    def padded(x: torch.Tensor) -> torch.Tensor:  # (C, h, w) -> (C, hp + 2r, wp + 2r), zeros outside
        return F.pad(x, (r, r + wp - w, r, r + hp - h))

    def normalised(x: torch.Tensor) -> torch.Tensor:
        if x.shape != (D, h, w):
            raise ValueError(f"frame features must all be ({D}, {h}, {w}), got {tuple(x.shape)}")
        return F.normalize(x.to(device).float(), dim=0)

    # Frame 0's soft labels: the area fraction of each id in each cell. (K+1, h, w)
    onehot = F.one_hot(labels0, num_classes).permute(2, 0, 1).float()
    soft0 = F.adaptive_avg_pool2d(onehot[None], (h, w))[0]

    # Ring buffer: slot 0 is frame 0, slots 1..context the most recent frames, filled in order so
    # the used slots are always a prefix. The order of slots does not matter: top-k and the
    # softmax treat the context as one set.
    slots = 1 + context
    keys = torch.zeros(slots, D, hp + 2 * r, wp + 2 * r, device=device)
    values = torch.zeros(slots, num_classes, hp + 2 * r, wp + 2 * r, device=device)
    keys[0], values[0] = padded(normalised(f0)), padded(soft0)
    used, next_slot = 1, 1

    out = torch.empty(T, H, W, dtype=torch.long)
    out[0] = F.interpolate(labels0[None, None].float(), size=(H, W), mode="nearest")[0, 0].long().cpu()
    for t in range(1, T):
        q = F.pad(normalised(frame_features(t)), (0, wp - w, 0, hp - h))  # (D, hp, wp)
        soft = _frame_soft_labels(q, keys[:used], values[:used], disk, inside, tile, topk, temperature)[:, :h, :w]
        up = F.interpolate(soft[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # (K+1, H, W)
        out[t] = up.argmax(0).cpu()
        if context > 0:  # the soft labels, not the argmax, become context
            keys[next_slot], values[next_slot] = padded(q[:, :h, :w]), padded(soft)
            used = min(used + 1, slots)
            next_slot = next_slot % context + 1
    return out
