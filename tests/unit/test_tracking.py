"""DAVIS J&F against hand-computed answers and a naive loop reference of the official code, label
propagation on a translating texture and against a dense reference, and the palette / overlay files."""
import math

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmssl.evaluation.davis import (
    bound_pixels,
    boundary_map,
    boundary_measure,
    dilate,
    evaluate_sequence,
    format_table,
    region_similarity,
    statistics,
    summarize,
)
from mmssl.evaluation.overlay import (
    davis_palette,
    load_palette_png,
    overlay_frames,
    save_palette_png,
    write_overlay,
)
from mmssl.evaluation.propagation import propagate


def box(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# ---------------------------------------------------------------- J and F by hand


def test_identical_and_disjoint_masks():
    a = box((60, 80), (10, 20), (10, 20))
    assert region_similarity(a, a) == 1 and boundary_measure(a, a) == 1
    b = box((60, 80), (40, 50), (60, 70))  # tolerance ceil(0.008 * 100) = 1 px; 40 px apart
    assert region_similarity(a, b) == 0 and boundary_measure(a, b) == 0


def test_shifted_square_jaccard_is_one_third():
    a = box((40, 40), (10, 20), (10, 20))
    b = box((40, 40), (10, 20), (15, 25))
    assert region_similarity(a, b) == 50 / 150


def test_boundary_tolerance():
    assert bound_pixels((480, 854)) == 8 and bound_pixels((100, 100)) == 2 and bound_pixels((5, 5), 3) == 3
    a = box((100, 100), (20, 60), (20, 60))  # tolerance ceil(0.008 * 141.4) = 2 px
    shifted = box((100, 100), (20, 60), (22, 62))  # every boundary pixel moves 2 px
    assert region_similarity(a, shifted) < 1 and boundary_measure(a, shifted) == 1
    inner = box((100, 100), (30, 50), (30, 50))  # 10 px inside every edge
    assert boundary_measure(a, inner) == 0 and region_similarity(a, inner) == 400 / 1600


def test_partial_boundary_overlap():
    # The boundary of rows [a, b) x cols [c, d) is the outline of rows a-1..b-1 x cols c-1..d-1.
    # gt outline: rows 9..19 x cols 9..19, 40 px; pred outline: rows 9..19 x cols 9..39, 80 px.
    # With a 2 px tolerance 13 + 13 + 9 = 35 pred pixels are near gt (top and bottom rows up to
    # col 21, the left column): precision 35/80. gt pixels near pred: all but the right column's
    # rows 12..16: 35/40. F = 2PR / (P + R) = 7/12.
    gt = box((30, 60), (10, 20), (10, 20))
    pred = box((30, 60), (10, 20), (10, 40))
    assert boundary_map(gt).sum() == 40 and boundary_map(pred).sum() == 80
    assert boundary_measure(gt, pred, bound_th=2) == pytest.approx(7 / 12, abs=1e-12)


def test_empty_masks_follow_the_official_rules():
    empty, full = np.zeros((20, 20), bool), box((20, 20), (5, 10), (5, 10))
    assert region_similarity(empty, empty) == 1 and boundary_measure(empty, empty) == 1
    assert region_similarity(empty, full) == 0 and boundary_measure(empty, full) == 0
    assert region_similarity(full, empty) == 0 and boundary_measure(full, empty) == 0
    # void pixels count for neither mask
    assert region_similarity(full, empty, void=full) == 1 and boundary_measure(full, empty, void=full) == 1
    per_frame = region_similarity(np.stack([full, empty]), np.stack([full, full]))
    assert per_frame.tolist() == [1.0, 0.0]


def test_statistics_use_the_official_overlapping_bins():
    v = [1, 0.8, 0.6, 0.4, 0.2, 0.0, 0.3, 0.9, 1.0, 0.5]
    # edges round(linspace(1, 10, 5)) - 1 = 0, 2, 5, 7, 9: bin 1 = v[0:3], bin 4 = v[7:10]
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(0.57) and recall == 0.5 and decay == pytest.approx(0.8 - 0.8)
    assert statistics([0.9, 0.8, 0.7, 0.2, 0.1])[2] == pytest.approx(0.85 - 0.15)  # bins v[0:2], v[3:5]


def test_first_and_last_frames_are_not_scored():
    gt = np.zeros((5, 20, 20), np.int64)
    gt[:, 5:10, 5:10] = 1
    pred = gt.copy()
    pred[0], pred[-1] = 0, 0
    obj = evaluate_sequence(gt, pred)[1]
    assert len(obj["J"]) == 3 and obj["J-Mean"] == 1 and obj["F-Mean"] == 1
    pred[2] = 0
    assert evaluate_sequence(gt, pred)[1]["J"] == [1.0, 0.0, 1.0]


def test_void_is_background_and_unknown_ids_are_refused():
    gt = np.zeros((3, 20, 20), np.int64)
    gt[:, 5:10, 5:10] = 1
    gt[:, 0:3, :] = 255  # the official loader turns void into background
    assert evaluate_sequence(gt, np.where(gt == 255, 0, gt))[1]["J-Mean"] == 1
    assert evaluate_sequence(gt, np.where(gt == 255, 1, gt))[1]["J-Mean"] < 1  # void predicted: false positives
    with pytest.raises(ValueError, match="0..1"):
        evaluate_sequence(gt, np.where(gt == 1, 2, 0))


def test_summarize_weighs_objects_not_sequences():
    gt_a = np.zeros((3, 20, 20), np.int64)
    gt_a[:, 2:6, 2:6], gt_a[:, 10:15, 10:15] = 1, 2
    pred_a = np.where(gt_a == 1, 1, 0)  # object 2 lost: J = F = 0
    gt_b = np.zeros((3, 20, 20), np.int64)
    gt_b[:, 4:9, 4:9] = 1
    summary = summarize({"a": evaluate_sequence(gt_a, pred_a), "b": evaluate_sequence(gt_b, gt_b)})
    # objects (1, 0, 1) -> 2/3; averaging the sequences (0.5, 1) would give 3/4
    assert summary["J-Mean"] == pytest.approx(2 / 3) and summary["F-Mean"] == pytest.approx(2 / 3)
    assert summary["J&F-Mean"] == pytest.approx(2 / 3) and summary["J-Recall"] == pytest.approx(2 / 3)
    assert list(summary["per_object"]) == ["a_1", "a_2", "b_1"]
    seq_a = summary["per_sequence"]["a"]
    assert seq_a["J&F-Mean"] == pytest.approx(0.5) and seq_a["objects"] == 2
    table = format_table(summary)
    assert "J&F-Mean" in table.splitlines()[0] and "0.667" in table.splitlines()[1] and "a_2" in table


# ---------------------------------------------------------------- a naive loop reference of the official code


def naive_bmap(m):
    """The official _seg2bmap at full size, pixel by pixel: right, bottom and bottom-right neighbours;
    on the last row the right one only, on the last column the bottom one only, never the corner."""
    H, W = m.shape
    b = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            if y == H - 1 and x == W - 1:
                continue
            if y == H - 1:
                b[y, x] = m[y, x] != m[y, x + 1]
            elif x == W - 1:
                b[y, x] = m[y, x] != m[y + 1, x]
            else:
                b[y, x] = m[y, x] != m[y, x + 1] or m[y, x] != m[y + 1, x] or m[y, x] != m[y + 1, x + 1]
    return b


def naive_dilate(b, r):
    H, W = b.shape
    out = np.zeros_like(b)
    ys, xs = np.nonzero(b)
    for y in range(H):
        for x in range(W):
            out[y, x] = any((y - py) ** 2 + (x - px) ** 2 <= r * r for py, px in zip(ys, xs))
    return out


def naive_f(gt, pred, r):
    gb, pb = naive_bmap(gt), naive_bmap(pred)
    n_g, n_p = gb.sum(), pb.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    p, rc = (pb & naive_dilate(gb, r)).sum() / n_p, (gb & naive_dilate(pb, r)).sum() / n_g
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_and_dilation_match_the_naive_reference(seed):
    rng = np.random.default_rng(seed)
    H, W = 23, 31
    # a blob (smooth noise thresholded), with speckle, touching the borders: every branch of _seg2bmap
    smooth = F.interpolate(torch.from_numpy(rng.normal(size=(1, 1, 4, 5))), size=(H, W), mode="bilinear").numpy()[0, 0]
    gt = (smooth > 0) ^ (rng.random((H, W)) < 0.05)
    pred = np.roll(gt, (1, -2), axis=(0, 1)) ^ (rng.random((H, W)) < 0.05)
    for m in (gt, pred):
        assert np.array_equal(boundary_map(m), naive_bmap(m))
        for r in (1, 2, 3, 2.5):
            assert np.array_equal(dilate(boundary_map(m), r), naive_dilate(naive_bmap(m), r))
    radius = bound_pixels((H, W))  # ceil(0.008 * 38.6) = 1
    assert boundary_measure(gt, pred) == pytest.approx(naive_f(gt, pred, radius), abs=1e-12)
    assert boundary_measure(gt, pred, bound_th=3) == pytest.approx(naive_f(gt, pred, 3), abs=1e-12)


def test_sequence_scores_match_the_naive_reference():
    rng = np.random.default_rng(7)
    T, H, W = 7, 17, 29
    gt = rng.integers(0, 3, (T, H, W))
    gt[0, 0, 0] = 2  # two objects in the first frame
    pred = np.where(rng.random((T, H, W)) < 0.8, gt, rng.integers(0, 3, (T, H, W)))
    scores = evaluate_sequence(gt, pred)
    summary = summarize({"s": scores})
    radius = bound_pixels((H, W))
    means = {"J": [], "F": []}
    for obj in (1, 2):
        g, p = gt[1:-1] == obj, pred[1:-1] == obj
        j = [(g[t] & p[t]).sum() / (g[t] | p[t]).sum() for t in range(T - 2)]
        f = [naive_f(g[t], p[t], radius) for t in range(T - 2)]
        for name, v in (("J", np.array(j)), ("F", np.array(f))):
            # the official db_statistics, uint8 cast included
            ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.uint8)
            decay = v[ids[0] : ids[1] + 1].mean() - v[ids[3] : ids[4] + 1].mean()
            assert scores[obj][f"{name}-Decay"] == pytest.approx(decay, abs=1e-12)
            means[name].append(v.mean())
    official = (np.mean(means["J"]) + np.mean(means["F"])) / 2
    assert summary["J&F-Mean"] == pytest.approx(official, abs=1e-12)


# ---------------------------------------------------------------- propagation


def texture_video(T=6, H=64, W=160, step=8, seed=0):
    """A smooth random texture moving right by ``step`` px a frame, two square objects painted on it.
    Returns frames float (T, 3, H, W) and ids (T, H, W). The objects start 7 cells from the left
    edge, where new texture enters with no match in earlier frames, beyond the radius used below."""
    g = torch.Generator().manual_seed(seed)
    S = step * (T - 1)
    coarse = torch.randn(1, 3, H // 4, (W + S) // 4, generator=g)
    canvas = F.interpolate(coarse, size=(H, W + S), mode="bilinear", align_corners=False)[0]
    canvas = canvas + 0.3 * torch.randn(3, H, W + S, generator=g)  # fine detail makes cells distinctive
    ids = torch.zeros(H, W + S, dtype=torch.long)
    ids[32:56, S + 56 : S + 88] = 1
    ids[8:32, S + 96 : S + 120] = 2
    frames = torch.stack([canvas[:, :, S - step * t : S - step * t + W] for t in range(T)])
    labels = torch.stack([ids[:, S - step * t : S - step * t + W] for t in range(T)])
    return frames, labels


def test_propagation_follows_a_translating_texture():
    frames, gt = texture_video()
    feats = F.pixel_unshuffle(frames, 8)  # (T, 192, 8, 20): each 8x8 patch, a stride-8 "encoder"
    pred = propagate(feats, gt[0], context=3, topk=5, radius=3, temperature=0.05)
    assert pred.shape == gt.shape and pred.dtype == torch.long
    assert torch.equal(pred[0], gt[0])
    for t in range(1, len(gt) - 1):
        for obj in (1, 2):
            assert region_similarity(gt[t].numpy() == obj, pred[t].numpy() == obj) > 0.9
    # a callable gives the same answer with only the context in memory
    by_frame = propagate(lambda i: feats[i], gt[0], context=3, topk=5, radius=3, temperature=0.05,
                         num_frames=len(feats))
    assert torch.equal(by_frame, pred)


def test_radius_is_euclidean_and_inclusive_in_the_legacy_protocol():
    g = torch.Generator().manual_seed(0)
    h, w = 9, 11
    f0 = torch.randn(16, h, w, generator=g)
    labels = torch.randint(0, 5, (h, w), generator=g)
    # frame 1 shows frame 0 moved by (1, 2) cells: each cell's exact match lies sqrt(5) ~ 2.24 away
    feats = torch.stack([f0, torch.roll(f0, (1, 2), dims=(1, 2))])
    reach = propagate(feats, labels, radius=2.3, topk=1, protocol="legacy")[1]
    assert torch.equal(reach[1:, 2:], labels[:-1, :-2])
    short = propagate(feats, labels, radius=2, topk=1, protocol="legacy")[1]
    assert (short[1:, 2:] == labels[:-1, :-2]).float().mean() < 0.6
    # radius 0: a cell can only copy from the same cell, whatever the features say
    rand = torch.randn(6, 16, h, w, generator=g)
    assert (propagate(rand, labels, radius=0, context=2, protocol="legacy") == labels).all()
    assert not (propagate(rand, labels, radius=3, context=2, protocol="legacy") == labels).all()


def test_topk_limits_the_voters():
    # frame 0 (1 x 5 cells): an exact match with id 1, two near matches with id 2, two opposites with id 0
    c, s = math.cos(0.1), math.sin(0.1)
    f0 = torch.tensor([[1, c, c, -1, -1], [0, s, -s, 0, 0]], dtype=torch.float)[:, None]  # (2, 1, 5)
    f1 = torch.tensor([[1.0], [0.0]])[:, :, None].expand(2, 1, 5)
    labels = torch.tensor([[1, 2, 2, 0, 0]])
    feats = torch.stack([f0, f1])
    assert (propagate(feats, labels, topk=1, temperature=10, radius=math.inf, protocol="legacy")[1] == 1).all()
    assert (propagate(feats, labels, topk=3, temperature=10, radius=math.inf, protocol="legacy")[1] == 2).all()
    # crw pads the context with copies of frame 0: frame 1 sees the exact match in every copy, so
    # it fills all three top places
    assert (propagate(feats, labels, topk=3, temperature=10, radius=math.inf)[1] == 1).all()


def dense_reference(feats, labels, context, topk, radius, temperature, out_size):
    """Propagation written directly from the protocol: every pair of positions, no tiles or buffers."""
    T, h, w = feats.shape[0], feats.shape[2], feats.shape[3]
    f = F.normalize(feats.float(), dim=1).flatten(2)  # (T, D, h*w)
    K1 = int(labels.max()) + 1
    soft = [F.adaptive_avg_pool2d(F.one_hot(labels, K1).permute(2, 0, 1).float()[None], (h, w))[0].flatten(1)]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    near = torch.cdist(pos, pos) <= radius + 1e-9  # (h*w, h*w)
    out = [labels]
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - context), t))
        aff = torch.cat([torch.where(near, f[t].T @ f[c], -math.inf) for c in ctx], 1)  # (hw, n*hw)
        val, idx = aff.topk(min(topk, aff.shape[1]), dim=1)
        wgt = torch.softmax(val / temperature, 1)
        lab = torch.cat([soft[c] for c in ctx], 1)  # (K1, n*hw)
        new = (wgt[None] * lab[:, idx]).sum(-1)  # (K1, hw)
        soft.append(new)
        up = F.interpolate(new.view(1, K1, h, w), size=out_size, mode="bilinear", align_corners=False)[0]
        out.append(up.argmax(0))
    return torch.stack(out)


def test_tiled_propagation_matches_a_dense_reference():
    g = torch.Generator().manual_seed(1)
    T, D, h, w = 7, 8, 7, 10  # 7 x 10 cells are not whole 4 x 4 tiles; T > context + 2 wraps the buffer
    base = torch.randn(1, D, h, w, generator=g)
    feats = base + 0.7 * torch.randn(T, D, h, w, generator=g)  # related frames, so labels spread
    labels = F.interpolate(torch.randint(0, 3, (1, 1, h, w), generator=g).float(), size=(2 * h, 2 * w))[0, 0].long()
    kw = {"context": 2, "topk": 4, "radius": 2.5, "temperature": 0.1}
    ours = propagate(feats, labels, tile=4, protocol="legacy", **kw)
    ref = dense_reference(feats, labels, out_size=(2 * h, 2 * w), **kw)
    assert torch.equal(ours, ref)
    assert torch.equal(propagate(feats, labels, tile=16, protocol="legacy", **kw), ref)


def crw_reference(feats, labels, n_context, topk, radius, temperature):
    """CRW's test-time label propagation (arXiv:2006.14613), written plainly from the published
    algorithm: the video is padded in front with ``n_context`` copies of frame 0; target frame t
    attends to frame 0 whole (the long memory) and to the n_context padded frames before it, those
    restricted to cells at distance < radius; the top-k affinities / temperature over all of them
    are softmaxed and weight the keys' soft labels; frame 0's labels are its one-hot maps resized
    bilinearly to the feature grid. Returns the soft labels (T - 1, K+1, h, w) of frames 1..T-1."""
    T, _, h, w = feats.shape
    f = F.normalize(feats.float(), dim=1).flatten(2)  # (T, D, hw)
    K1 = int(labels.max()) + 1
    onehot = F.one_hot(labels, K1).permute(2, 0, 1).float()[None]
    lbl0 = F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False)[0].flatten(1)  # (K1, hw)
    padded_feats = [f[0]] * n_context + [f[t] for t in range(T)]
    padded_lbls = [lbl0] * n_context + [lbl0]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    restrict = torch.where(torch.cdist(pos, pos) < radius, 0.0, -1e10)  # (hw keys, hw queries)
    out = []
    for t in range(1, T):
        i = n_context + t  # the target's index in the padded video
        key_ids = [0] + list(range(i - n_context, i))  # long memory, then the short context
        A = torch.stack([padded_feats[k].T @ f[t] for k in key_ids]) / temperature  # (n, hw keys, hw queries)
        A[1:] += restrict
        A = A.flatten(0, 1)  # (n * hw, hw queries)
        weights, ids = A.topk(topk, dim=0)
        weights = torch.softmax(weights, dim=0)
        ctx = torch.cat([padded_lbls[k] for k in key_ids], 1)  # (K1, n * hw)
        pred = (ctx[:, ids] * weights[None]).sum(1)  # (K1, hw queries)
        padded_lbls.append(pred)
        out.append(pred.view(K1, h, w))
    return torch.stack(out)


@pytest.mark.parametrize("n_context, radius, tile", [(3, 2.5, 4), (2, 3.0, 16), (5, 12.0, 4)])
def test_crw_protocol_reproduces_a_plain_port_of_the_reference(n_context, radius, tile):
    """Random features over 9 frames (more than the context, so the padding runs out and the
    ring buffer wraps): the default protocol's soft labels match the port within 1e-5."""
    from mmssl.evaluation.propagation import soft_labels

    g = torch.Generator().manual_seed(n_context)
    T, D, h, w = 9, 16, 7, 10
    base = torch.randn(1, D, h, w, generator=g)
    feats = base + 0.8 * torch.randn(T, D, h, w, generator=g)
    labels = torch.randint(0, 3, (h * 8, w * 8), generator=g)  # a stride-8 grid: bilinear samples it
    labels[:20, :30] = 1
    kw = {"topk": 5, "radius": radius, "temperature": 0.05}
    frames = soft_labels(feats, labels, context=n_context, tile=tile, **kw)
    assert next(frames) == T
    ours = torch.stack(list(frames))
    ref = crw_reference(feats, labels, n_context, **kw)
    assert ours.shape == ref.shape == (T - 1, 3, h, w)
    assert (ours - ref).abs().max() <= 1e-5
    # and it is a different protocol from the legacy one
    legacy = soft_labels(feats, labels, context=n_context, tile=tile, protocol="legacy", **kw)
    next(legacy)
    assert (torch.stack(list(legacy)) - ref).abs().max() > 1e-2
    # propagate is the argmax of the same soft labels, upsampled
    ids = propagate(feats, labels, context=n_context, tile=tile, **kw)
    up = F.interpolate(ref, size=labels.shape, mode="bilinear", align_corners=False).argmax(1)
    assert (ids[1:] == up).float().mean() > 0.999


# ---------------------------------------------------------------- palette PNGs and overlays


def test_davis_palette():
    p = davis_palette()
    assert len(p) == 768 and p[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert p[-3:] == [224, 224, 192] and len(davis_palette(4)) == 12


def test_palette_png_round_trip(tmp_path):
    ids = np.random.default_rng(0).integers(0, 4, (13, 17)).astype(np.uint8)
    path = save_palette_png(ids, tmp_path / "a" / "00000.png")
    back, palette = load_palette_png(path)
    assert np.array_equal(back, ids) and palette[:12] == davis_palette(4)
    assert Image.open(path).mode == "P"
    custom = [255, 255, 255, 10, 20, 30]
    _, palette = load_palette_png(save_palette_png(ids, tmp_path / "b.png", custom))
    assert palette[:6] == custom


def test_overlay_colours_objects_and_their_boundary():
    frames = np.full((1, 3, 10, 10), 100, np.uint8)
    labels = np.zeros((1, 10, 10), np.int64)
    labels[0, 2:8, 2:8] = 1
    out = overlay_frames(frames, labels, alpha=0.5)
    assert out.shape == (1, 10, 10, 3)
    assert out[0, 0, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 5, 5].tolist() == [114, 50, 50]  # 0.5 * 100 + 0.5 * (128, 0, 0)
    assert out[0, 2, 5].tolist() == [128, 0, 0]  # boundary in full colour


def test_write_overlay_mp4_and_gif(tmp_path):
    rng = np.random.default_rng(0)
    T, H, W = 5, 33, 47  # odd sides: the mp4 is padded to 34 x 48
    frames = torch.from_numpy(rng.integers(0, 256, (T, 3, H, W)).astype(np.uint8))
    labels = torch.from_numpy(rng.integers(0, 3, (T, H, W)))
    mp4 = write_overlay(frames, labels, tmp_path / "v.mp4", fps=10)
    with av.open(str(mp4)) as container:
        decoded = [f for f in container.decode(video=0)]
    assert len(decoded) == T and (decoded[0].width, decoded[0].height) == (48, 34)
    gif = write_overlay(frames, labels, tmp_path / "v.gif", fps=10)
    with Image.open(gif) as image:
        assert image.n_frames == T and image.size == (W, H)
    with pytest.raises(ValueError, match="mp4"):
        write_overlay(frames, labels, tmp_path / "v.avi")
