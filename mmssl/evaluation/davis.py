"""J&F of the DAVIS-2017 semi-supervised benchmark, computed as the official davis2017-evaluation
code does (github.com/davisvideochallenge/davis2017-evaluation; Pont-Tuset et al., arXiv:1704.00675;
the measures of Perazzi et al., CVPR 2016).

- J (region similarity): the Jaccard index of a binary mask; 1 when both masks are empty.
- F (contour accuracy): the F-measure of boundary pixels matched within a tolerance of
  ceil(0.008 * image diagonal) pixels (8 px at 480p), with the empty-boundary rules of the
  official ``f_measure``.
- Per object: J and F on every frame but the first (the given annotation) and the last, then
  Mean, Recall (fraction of frames above 0.5) and Decay (mean of the first quarter of the frames
  minus that of the last; see ``statistics`` for the official, overlapping quarters).
- Globally: every object of every sequence weighs the same; J&F-Mean = (J-Mean + F-Mean) / 2.

The official semi-supervised pipeline has no void region in practice: the loader turns the
annotation's void label 255 into background before it splits the objects, and the void mask it
then takes (``binary mask == 255``) is always empty. ``evaluate_sequence`` does the same; the
optional ``void`` argument of the two per-mask measures follows the official functions for
callers that want it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

VOID_LABEL = 255
BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal
MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def _masks(gt: Any, pred: Any, void: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim not in (2, 3):
        raise ValueError(f"expected gt and pred masks of one shape, (H, W) or (T, H, W); "
                         f"got {gt.shape} and {pred.shape}")
    if void is not None:
        void = np.asarray(void).astype(bool)
        if void.shape != gt.shape:
            raise ValueError(f"void mask shape {void.shape} differs from the masks' {gt.shape}")
    return gt, pred, void


def region_similarity(gt: Any, pred: Any, void: Any = None) -> float | np.ndarray:
    """J: |gt & pred| / |gt | pred|, void pixels left out of both counts (official ``db_eval_iou``).

    Args:
        gt, pred: binary masks (H, W) or (T, H, W).
        void: optional mask of pixels that count for neither.
    Returns:
        a float for (H, W), a (T,) float64 array for (T, H, W). An empty union scores 1.
    """
    gt, pred, void = _masks(gt, pred, void)
    keep = True if void is None else ~void
    inter = ((gt & pred) & keep).sum(axis=(-2, -1))
    union = ((gt | pred) & keep).sum(axis=(-2, -1))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if gt.ndim == 2 else j.astype(np.float64)


def boundary_map(mask: Any) -> np.ndarray:
    """One-pixel boundaries of a binary mask, as the official ``_seg2bmap`` draws them at full size.

    A pixel is a boundary pixel when it differs from its right, bottom or bottom-right neighbour.
    The last row compares with the right neighbour only, the last column with the bottom one only,
    and the bottom-right corner is never a boundary: the image border is not an edge, so a mask
    touching it has no boundary there. (H, W) -> bool (H, W).
    """
    m = np.asarray(mask).astype(bool)
    right = np.zeros_like(m)
    right[:, :-1] = m[:, 1:] != m[:, :-1]
    down = np.zeros_like(m)
    down[:-1, :] = m[1:, :] != m[:-1, :]
    diag = np.zeros_like(m)
    diag[:-1, :-1] = m[1:, 1:] != m[:-1, :-1]
    # Inside the image the three maps cover all three neighbours; the zero fill leaves only
    # `right` on the last row, only `down` on the last column and nothing at the corner.
    return right | down | diag


def disk(radius: float) -> np.ndarray:
    """The structuring element of skimage.morphology.disk: offsets with x^2 + y^2 <= r^2, (2r+1, 2r+1) bool."""
    r = math.floor(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= radius * radius


def dilate(bmap: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of ``bmap`` (H, W) by ``disk(radius)``; pixels outside the image add nothing.

    A pixel is in the dilation when some True pixel lies within Euclidean distance ``radius``, so
    the exact distance transform of the complement gives it in O(H W) for any radius (the
    official code dilates with OpenCV, whose border handling also ignores outside pixels).
    """
    bmap = np.asarray(bmap, dtype=bool)
    if not bmap.any():
        return np.zeros_like(bmap)
    # Distances are square roots of integer sums, exact enough that `<= radius` is an exact
    # integer comparison for any radius a DAVIS image can need.
    return ndimage.distance_transform_edt(~bmap) <= radius


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Tolerance in pixels: bound_th itself when >= 1, else ceil(bound_th * sqrt(H^2 + W^2))."""
    return float(bound_th) if bound_th >= 1 else float(math.ceil(bound_th * math.hypot(*shape)))


def _f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    radius = bound_pixels(gt.shape, bound_th)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    # The official empty-boundary rules: nothing predicted has precision 1 and recall 0, nothing
    # to find has recall 1 and precision 0, and both empty is a perfect score.
    if n_pred == 0 and n_gt == 0:
        precision = recall = 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = float((pred_b & dilate(gt_b, radius)).sum()) / n_pred
        recall = float((gt_b & dilate(pred_b, radius)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_measure(gt: Any, pred: Any, void: Any = None, bound_th: float = BOUND_TH) -> float | np.ndarray:
    """F: the boundary F-measure of official ``db_eval_boundary`` / ``f_measure``.

    Boundaries come from ``boundary_map`` of each mask with its void pixels cleared; a predicted
    boundary pixel is correct (precision) when a ground-truth boundary pixel lies within the
    tolerance disk, and a ground-truth one is found (recall) when a predicted one does.

    Args:
        gt, pred: binary masks (H, W) or (T, H, W).
        void: optional mask; void pixels are cleared from both masks before their boundaries are
            taken, as in the official code.
        bound_th: tolerance, a fraction of the image diagonal when < 1, else a radius in pixels
            (an integer there; the official disk of a fractional radius is off-centre).
    Returns:
        a float for (H, W), a (T,) float64 array for (T, H, W).
    """
    gt, pred, void = _masks(gt, pred, void)
    if gt.ndim == 2:
        return _f_measure(gt, pred, void, bound_th)
    return np.array([_f_measure(gt[t], pred[t], None if void is None else void[t], bound_th) for t in range(len(gt))])


def statistics(per_frame: Any) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of per-frame values, as official ``db_statistics``.

    Decay compares 4 bins whose edges are round(linspace(1, n, 5)) - 1 and that include their right
    edge, so neighbouring bins share a frame (they are not np.array_split's disjoint quarters):
    Decay = mean(bin 1) - mean(bin 4). The official code casts the edges to uint8, which wraps past
    256 frames; plain integers are used here, identical for every DAVIS sequence.
    """
    v = np.asarray(per_frame, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"need a non-empty 1-D series of per-frame values, got shape {v.shape}")
    mean, recall = float(np.nanmean(v)), float(np.nanmean(v > 0.5))
    # The 1e-10 makes numpy's round-half-to-even round halves up, as MATLAB's round did.
    edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[edges[i] : edges[i + 1] + 1] for i in range(4)]
    return mean, recall, float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


def evaluate_sequence(gt: Any, pred: Any, num_objects: int | None = None) -> dict[int, dict[str, Any]]:
    """Per-object J and F of one sequence, semi-supervised protocol.

    Args:
        gt: int (T, H, W) annotation, object ids 1..K, 0 background, 255 void (scored as background,
            as the official loader does).
        pred: int (T, H, W) predicted ids. Only frames 1..T-2 are read.
        num_objects: K; by default the largest id in the first annotated frame, as official.
    Returns:
        {object id: {"J": [per-frame J], "F": [per-frame F] over frames 1..T-2,
        "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay": floats}}.
        An object the prediction never names scores as an empty mask.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"expected gt and pred of one shape (T, H, W), got {gt.shape} and {pred.shape}")
    if gt.shape[0] < 3:
        raise ValueError(f"the first and last frames are not scored: need at least 3 frames, got {gt.shape[0]}")
    gt = np.where(gt == VOID_LABEL, 0, gt).astype(np.int64)
    if num_objects is None:
        num_objects = int(gt[0].max())
    gt, pred = gt[1:-1], pred[1:-1].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() > num_objects):
        # The official evaluator refuses such a result ("an index higher than the number of objects").
        raise ValueError(f"predicted ids must lie in 0..{num_objects} (the objects of the first frame), "
                         f"got {pred.min()}..{pred.max()}")
    out = {}
    for obj in range(1, num_objects + 1):
        j = region_similarity(gt == obj, pred == obj)
        f = boundary_measure(gt == obj, pred == obj)
        row: dict[str, Any] = {"J": j.tolist(), "F": f.tolist()}
        for name, values in (("J", j), ("F", f)):
            row[f"{name}-Mean"], row[f"{name}-Recall"], row[f"{name}-Decay"] = statistics(values)
        out[obj] = row
    return out


def summarize(per_sequence: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Global J&F as the official evaluation_method.py: every object of every sequence weighs the same.

    Args:
        per_sequence: {sequence name: ``evaluate_sequence`` output}.
    Returns:
        JSON-ready {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay": floats,
        "per_object": {"<seq>_<id>": {"J-Mean", "F-Mean"}} (the official per-sequence CSV's rows),
        "per_sequence": {seq: {"J&F-Mean", "J-Mean", "F-Mean", "objects"}} (means over its objects)}.
    """
    rows = [(seq, obj, r) for seq, objs in per_sequence.items() for obj, r in objs.items()]
    if not rows:
        raise ValueError("no objects to summarise: every sequence's first frame was empty")
    summary: dict[str, Any] = {}
    for key in MEASURES[1:]:
        summary[key] = float(np.mean([r[key] for _, _, r in rows]))
    summary["J&F-Mean"] = (summary["J-Mean"] + summary["F-Mean"]) / 2
    summary = {key: summary[key] for key in MEASURES}
    summary["per_object"] = {f"{seq}_{obj}": {"J-Mean": r["J-Mean"], "F-Mean": r["F-Mean"]} for seq, obj, r in rows}
    summary["per_sequence"] = {}
    for seq, objs in per_sequence.items():
        if objs:
            jm = float(np.mean([r["J-Mean"] for r in objs.values()]))
            fm = float(np.mean([r["F-Mean"] for r in objs.values()]))
            summary["per_sequence"][seq] = {"J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "F-Mean": fm, "objects": len(objs)}
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The official printout: the global row of MEASURES, then one row per object (``<seq>_<id>``)."""
    width = max(len(m) for m in MEASURES) + 1
    lines = ["".join(m.rjust(width) for m in MEASURES), "".join(f"{summary[m]:{width}.3f}" for m in MEASURES), ""]
    names = list(summary.get("per_object", {}))
    name_w = max([len("Sequence")] + [len(n) for n in names]) + 1
    lines.append("Sequence".rjust(name_w) + "J-Mean".rjust(9) + "F-Mean".rjust(9))
    for name in names:
        row = summary["per_object"][name]
        lines.append(f"{name:>{name_w}}{row['J-Mean']:9.3f}{row['F-Mean']:9.3f}")
    return "\n".join(lines)
