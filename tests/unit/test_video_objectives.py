"""Video objectives: the TCN losses against loops written from the papers, TCN's negatives,
Lab colour and k-means quantisation, colorization tracking against a plain loop, and a
forward / backward smoke test of both objectives on the dense encoder."""
import json

import pytest
import torch
import torch.nn.functional as F

from mmssl import ENCODERS, OBJECTIVES, load_encoder, save_encoder
from mmssl.losses import npairs, triplet_semihard
from mmssl.objectives.colorization import ColorQuantizer, lab_to_rgb, rgb_to_lab
from mmssl.objectives.tcn import tcn_negatives


def unit(*shape, g):
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- triplet loss with semi-hard negatives

def _value(d):
    return d.detach().item()


def reference_triplet_semihard(a, p, n, valid, margin):
    """FaceNet's semi-hard triplets, per anchor, with TensorFlow's fallback; also which rule chose."""
    losses, rules = [], []
    for i in range(len(a)):
        d_ap = ((a[i] - p[i]) ** 2).sum()
        d_an = [((a[i] - n[j]) ** 2).sum() for j in range(len(n)) if valid[i, j]]
        if not d_an:
            rules.append("none")
            continue
        semihard = [d for d in d_an if d_ap < d < d_ap + margin]
        farther = [d for d in d_an if d > d_ap]
        if semihard:
            chosen, rule = min(semihard, key=_value), "semi-hard"
        elif farther:  # every farther negative already clears the margin: zero loss
            chosen, rule = min(farther, key=_value), "easy"
        else:  # every negative is harder than the positive: the least hard of them
            chosen, rule = max(d_an, key=_value), "hard"
        losses.append(torch.relu(d_ap - chosen + margin))
        rules.append(rule)
    loss = torch.stack(losses).mean() if losses else (a.sum() + p.sum() + n.sum()) * 0
    return loss, rules


@pytest.mark.parametrize("mask", ["random", "sparse", "empty_rows", "all", "none"])
def test_triplet_semihard_matches_loop_reference(mask):
    g = torch.Generator().manual_seed(0)
    N, M, D, margin = 12, 15, 4, 0.5
    a = unit(N, D, g=g).requires_grad_()
    p = a.detach() + 0.6 * torch.randn(N, D, generator=g, dtype=torch.float64)
    p[::4] = -p[::4]  # positives far across the sphere: every negative is harder than them
    p = F.normalize(p, dim=-1).requires_grad_()
    n = unit(M, D, g=g).requires_grad_()
    valid = {
        "random": torch.rand(N, M, generator=g) < 0.5,
        "sparse": torch.rand(N, M, generator=g) < 0.15,
        "empty_rows": (torch.rand(N, M, generator=g) < 0.5) & (torch.arange(N) % 3 != 0)[:, None],
        "all": torch.ones(N, M, dtype=torch.bool),
        "none": torch.zeros(N, M, dtype=torch.bool),
    }[mask]
    loss = triplet_semihard(a, p, n, valid, margin)
    ref, rules = reference_triplet_semihard(a, p, n, valid, margin)
    torch.testing.assert_close(loss, ref)
    grads = torch.autograd.grad(loss, [a, p, n], allow_unused=True)
    ref_grads = torch.autograd.grad(ref, [a, p, n], allow_unused=True)
    for x, got, want in zip([a, p, n], grads, ref_grads):
        got = torch.zeros_like(x) if got is None else got
        torch.testing.assert_close(got, torch.zeros_like(x) if want is None else want)
        assert torch.isfinite(got).all()
    if mask == "random":  # the data exercise every branch of the mining
        assert {"semi-hard", "easy", "hard"} <= set(rules)
        assert loss > 0 and grads[0].abs().sum() > 0
    if mask == "none":
        assert loss.item() == 0


def test_triplet_semihard_distances_and_checks():
    g = torch.Generator().manual_seed(1)
    a, n = unit(4, 3, g=g), unit(5, 3, g=g)
    valid = torch.ones(4, 5, dtype=torch.bool)
    # the positive is the anchor itself: d_ap = 0, so the chosen negative is simply the nearest one
    loss, d_ap, d_an = triplet_semihard(a, a, n, valid, 0.2, return_distances=True)
    nearest = torch.cdist(a, n).pow(2).min(dim=1).values
    assert d_ap.abs().max() < 1e-12
    torch.testing.assert_close(d_an, nearest)
    torch.testing.assert_close(loss, torch.relu(0.2 - nearest).mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # distances stay fp32 under autocast
        a32, n32 = a.float(), n.float()
        torch.testing.assert_close(triplet_semihard(a32, a32, n32, valid, 0.2), loss.float())
        torch.testing.assert_close(npairs(a32, n32[:4]), npairs(a, n[:4]).float())
    with pytest.raises(ValueError, match="valid must be a bool mask"):
        triplet_semihard(a, a, n, valid.float(), 0.2)
    with pytest.raises(ValueError, match="expects anchor, positive"):
        triplet_semihard(a, a[:3], n, valid, 0.2)


# ---------------------------------------------------------------- n-pairs

def reference_npairs(a, p, valid, l2_reg):
    """Sohn (2016), Eq. 3 per anchor: softmax over its own positive and the positives that are its negatives."""
    total = 0.0
    for i in range(len(a)):
        others = [j for j in range(len(a)) if j != i and (valid is None or valid[i, j])]
        logits = torch.stack([a[i] @ p[i], *[a[i] @ p[j] for j in others]])
        total = total - F.log_softmax(logits, 0)[0]
    reg = 0.25 * l2_reg * (sum((x ** 2).sum() for x in a) / len(a) + sum((x ** 2).sum() for x in p) / len(p))
    return total / len(a) + reg


@pytest.mark.parametrize("mask, l2_reg", [("none", 0.0), ("random", 0.0), ("random", 0.3), ("empty_rows", 0.0)])
def test_npairs_matches_loop_reference(mask, l2_reg):
    g = torch.Generator().manual_seed(2)
    N, D = 9, 5
    a = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    valid = None if mask == "none" else torch.rand(N, N, generator=g) < 0.5
    if mask == "empty_rows":
        valid[::2] = False  # those anchors have only their positive: loss 0, no NaN
        valid[::2, ::2] = torch.eye(len(range(0, N, 2)), dtype=torch.bool)  # the diagonal is ignored either way
    loss = npairs(a, p, valid, l2_reg)
    ref = reference_npairs(a, p, valid, l2_reg)
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, [a, p]), torch.autograd.grad(ref, [a, p])):
        torch.testing.assert_close(got, want)
        assert torch.isfinite(got).all() and got.abs().sum() > 0


# ---------------------------------------------------------------- TCN

def test_tcn_negatives_match_loop():
    times = torch.tensor([[0, 3, 9, 30], [5, 6, 40, 41], [2, 2, 2, 2]])
    valid = tcn_negatives(times, 5)
    B, N = times.shape
    for i in range(B * N):
        for j in range(B * N):
            (b, n), (b2, n2) = divmod(i, N), divmod(j, N)
            want = b != b2 or abs(int(times[b, n]) - int(times[b2, n2])) >= 5
            assert bool(valid[i, j]) == want, (i, j)
    assert not valid.diagonal().any()


def tcn_batch(B=2, N=3, size=32, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    anchor = torch.randn(B, N, channels, size, size, generator=g)
    return {"anchor": anchor, "positive": anchor + 0.3 * torch.randn(anchor.shape, generator=g),
            "times": torch.arange(N).repeat(B, 1) * 10}


@pytest.mark.parametrize("loss_name", ["triplet", "npairs"])
def test_tcn_loss_is_the_loss_of_its_embeddings(loss_name):
    torch.manual_seed(0)
    enc = ENCODERS.build("dense_convnet", widths=[8, 16, 16], channels=3, blocks=1)
    tcn = OBJECTIVES.build("tcn", encoder=enc, embed_dim=8, hidden=16, loss=loss_name, margin=1.0,
                           neg_margin_frames=15).eval()  # eval: the per-frame embed equals the batched one
    batch = tcn_batch(N=4)
    out = tcn(batch)
    a = tcn.embed(batch["anchor"].flatten(0, 1))
    p = tcn.embed(batch["positive"].flatten(0, 1))
    valid = tcn_negatives(batch["times"], 15)
    want = triplet_semihard(a, p, p, valid, 1.0) if loss_name == "triplet" else npairs(a, p, valid)
    torch.testing.assert_close(out["loss"], want, rtol=1e-4, atol=1e-5)
    d = torch.stack([torch.stack([((x - y) ** 2).sum() for y in p]) for x in a])
    torch.testing.assert_close(out["pos_dist"], d.diagonal().mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["neg_dist"], d[valid].mean(), rtol=1e-4, atol=1e-5)
    assert 0 < out["std"] < 1 and torch.allclose(a.norm(dim=-1), torch.ones(8))
    assert tcn.export_encoder() is enc
    with pytest.raises(ValueError, match="tcn expects"):
        tcn({**batch, "times": batch["times"][:, :2]})
    with pytest.raises(ValueError, match="loss must be one of"):
        OBJECTIVES.build("tcn", encoder=enc, loss="contrastive")


# ---------------------------------------------------------------- Lab colour and quantisation

def test_lab_round_trip_and_known_values():
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(2, 4, 3, 9, 7, generator=g)  # any leading dims
    lab = rgb_to_lab(rgb)
    assert lab.shape == rgb.shape
    assert (lab[..., 0, :, :] >= 0).all() and (lab[..., 0, :, :] <= 100 + 1e-4).all()
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-4
    corners = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])[..., None, None]
    want = torch.tensor([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                         [32.30, 79.19, -107.86]])
    torch.testing.assert_close(rgb_to_lab(corners)[..., 0, 0], want, atol=0.02, rtol=0)
    out_of_gamut = lab_to_rgb(torch.tensor([[50.0, 0, -150], [100, 120, 0]])[..., None, None])
    assert out_of_gamut.min() >= 0 and out_of_gamut.max() <= 1


def test_color_quantizer_recovers_clusters():
    g = torch.Generator().manual_seed(4)
    k = 8
    angle = torch.arange(k) * 2 * torch.pi / k
    true = 60 * torch.stack([angle.cos(), angle.sin()], 1) + torch.randn(k, 2, generator=g)  # 45 apart at least
    ab = (true[torch.randint(k, (4000,), generator=g)] + torch.randn(4000, 2, generator=g)).contiguous()
    q = ColorQuantizer(k).fit(ab, generator=torch.Generator().manual_seed(0))
    again = ColorQuantizer(k).fit(ab, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q.centers, again.centers)  # deterministic for a given generator
    # every true cluster has a centre next to it, and the quantisation error is the noise's
    assert torch.cdist(true, q.centers).min(dim=1).values.max() < 0.5
    grid = ab[:3600].T.reshape(2, 60, 60)  # (2, H, W)
    err = (q.decode(q.assign(grid)) - grid).pow(2).sum(0).mean()
    assert err < 3.0  # 2 (unit noise in a and b) plus the centres' estimation error
    centres_as_image = q.centers.T.reshape(2, 2, 4)[None]  # (1, 2, H=2, W=4)
    ids = q.assign(centres_as_image)
    assert ids.shape == (1, 2, 4) and torch.equal(ids.flatten(), torch.arange(k))
    assert torch.equal(q.decode(ids), centres_as_image)


# ---------------------------------------------------------------- colorization

def fitted_quantizer(frames, k=6, stride=8):
    ab = F.avg_pool2d(rgb_to_lab(frames.flatten(0, 1))[:, 1:], stride)
    return ColorQuantizer(k).fit(ab.permute(0, 2, 3, 1).reshape(-1, 2), generator=torch.Generator().manual_seed(0))


def reference_colorization(frames, encoder, quantizer, R, temperature, eps, stride=8):
    """Loops over clips, target cells and reference cells, straight from arXiv:1806.09594, Sec. 3."""
    B, T, _, H, W = frames.shape
    h, w = H // stride, W // stride
    total, correct, count = 0.0, 0, 0
    for b in range(B):
        feats, classes = [], []
        for t in range(T):
            lab = rgb_to_lab(frames[b, t])
            feats.append(encoder.feature_map((lab[:1] / 50 - 1)[None])[0])  # (D, h, w)
            cls = torch.zeros(h, w, dtype=torch.long)
            for i in range(h):
                for j in range(w):
                    ab = lab[1:, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean(dim=(1, 2))
                    cls[i, j] = min(range(quantizer.k), key=lambda c: float(((ab - quantizer.centers[c]) ** 2).sum()))
            classes.append(cls)
        for i in range(h):
            for j in range(w):
                refs = [(r, y, x) for r in range(R) for y in range(h) for x in range(w)]
                logits = torch.stack([feats[R][:, i, j] @ feats[r][:, y, x] for r, y, x in refs]) / temperature
                attention = torch.softmax(logits, 0)
                copied = [sum((attention[n] for n, (r, y, x) in enumerate(refs) if classes[r][y, x] == c),
                              torch.zeros(())) for c in range(quantizer.k)]
                target = int(classes[R][i, j])
                total = total - torch.log(copied[target] + eps)
                correct += int(max(range(quantizer.k), key=lambda c: _value(copied[c])) == target)
                count += 1
    return total / count, correct / count


def test_colorization_matches_loop_reference():
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, 16, 24)  # B=2 clips of R=2 references + 1 target
    enc = ENCODERS.build("dense_convnet", widths=[4, 8, 8], blocks=1).eval()
    q = fitted_quantizer(frames)
    obj = OBJECTIVES.build("colorization", encoder=enc, quantizer=q, num_refs=2, temperature=0.5)
    out = obj({"frames": frames})
    ref_loss, ref_acc = reference_colorization(frames, enc, q, R=2, temperature=0.5, eps=obj.eps)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-4, atol=1e-5)
    assert out["acc"].item() == pytest.approx(ref_acc)
    assert "quantizer.centers" in obj.state_dict() and obj.export_encoder() is enc
    with pytest.raises(ValueError, match=r"expects frames \(B, 3, 3, H, W\)"):
        obj({"frames": frames[:, :2]})
    unfitted = OBJECTIVES.build("colorization", encoder=enc, quantizer=ColorQuantizer(), num_refs=2)
    with pytest.raises(ValueError, match="quantizer is not fitted"):
        unfitted({"frames": frames})


class PatchPixels(torch.nn.Module):
    """An 'identity' encoder: each 8x8 cell's L pixels, centred and unit-norm, are its feature."""

    def feature_map(self, x):
        f = F.pixel_unshuffle(x, 8)  # (B, 64, h, w)
        return F.normalize(f - f.mean(dim=1, keepdim=True), dim=1)


def blocky_clip(T, g, size=32):
    """Frames whose 8x8 cells each have one random colour, textured in brightness pixel by pixel."""
    colour = torch.rand(T, 3, size // 8, size // 8, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2)
    return colour * (0.6 + 0.4 * torch.rand(T, 1, size, size, generator=g))


def test_colorization_copies_colours_when_the_target_is_a_reference():
    g = torch.Generator().manual_seed(5)
    clips = torch.stack([blocky_clip(3, g) for _ in range(2)])  # (B=2, 3, 3, 32, 32)
    frames = torch.cat([clips, clips[:, 1:2]], dim=1)  # the target repeats reference 1
    q = fitted_quantizer(frames, k=8)
    obj = OBJECTIVES.build("colorization", encoder=PatchPixels(), quantizer=q, num_refs=3, temperature=0.01)
    pred, target = obj.copy_colors(frames)
    assert pred.shape == (2, 16, 8) and target.unique().numel() >= 5  # the colour classes vary over the target
    out = obj({"frames": frames})
    assert out["acc"].item() == 1.0 and out["loss"].item() < 1e-3
    torch.testing.assert_close(pred.sum(-1), torch.ones(2, 16))
    # a target that is none of the references cannot be copied
    other = torch.cat([clips, torch.stack([blocky_clip(1, g) for _ in range(2)])], dim=1)
    assert obj({"frames": other})["acc"].item() < 0.7


# ---------------------------------------------------------------- dense encoder and smoke training

@pytest.mark.parametrize("shape, grid", [((2, 1, 64, 64), (8, 8)), ((1, 1, 63, 50), (8, 7)), ((1, 1, 8, 8), (1, 1))])
def test_dense_convnet_shapes(shape, grid):
    enc = ENCODERS.build("dense_convnet").eval()  # eval: BatchNorm accepts a single 1x1 map
    x = torch.randn(shape)
    fmap = enc.feature_map(x)
    assert fmap.shape == (shape[0], 128, *grid) and enc.embed_dim == 128 and enc.stride == 8
    tokens = enc.forward_features(x)
    assert tokens.shape == (shape[0], grid[0] * grid[1], 128)
    torch.testing.assert_close(tokens[:, -1], fmap[:, :, -1, -1])  # row-major: the last token is the bottom right
    if grid[0] > 1:
        torch.testing.assert_close(tokens[:, grid[1]], fmap[:, :, 1, 0])  # the first cell of the second row
    assert enc(x).shape == (shape[0], 128) and enc.receptive_field == 79
    with pytest.raises(ValueError, match="three positive channel counts"):
        ENCODERS.build("dense_convnet", widths=[8, 8])


def test_dense_convnet_save_load(tmp_path):
    enc = ENCODERS.build("dense_convnet", widths=[8, 16, 24], channels=1, blocks=1).eval()
    save_encoder(enc, tmp_path / "encoder", input="lab_l")
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["encoder"]["kwargs"]["widths"] == [8, 16, 24]
    loaded = load_encoder(tmp_path)
    x = torch.randn(2, 1, 40, 40)
    torch.testing.assert_close(loaded.feature_map(x), enc.feature_map(x))
    assert loaded.embed_dim == 24 and loaded.meta["input"] == "lab_l"


def assert_every_parameter_learns(module):
    for name, param in module.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_smoke_tcn_on_dense_convnet():
    torch.manual_seed(0)
    enc = ENCODERS.build("dense_convnet", widths=[8, 16, 32], channels=3)
    tcn = OBJECTIVES.build("tcn", encoder=enc, embed_dim=16, hidden=32, margin=1.0)
    out = tcn(tcn_batch(B=2, N=3, size=32))
    assert torch.isfinite(out["loss"]) and out["loss"] > 0 and set(out) == {"loss", "std", "pos_dist",
                                                                           "neg_dist"}
    out["loss"].backward()
    assert_every_parameter_learns(tcn)


def test_smoke_colorization_on_dense_convnet():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    frames = torch.stack([blocky_clip(4, g, size=64) for _ in range(2)])  # (2, 4, 3, 64, 64)
    enc = ENCODERS.build("dense_convnet")
    obj = OBJECTIVES.build("colorization", encoder=enc, quantizer=fitted_quantizer(frames, k=16), num_refs=3)
    out = obj({"frames": frames})
    assert torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert_every_parameter_learns(obj)
    assert not list(obj.quantizer.parameters())  # the centres are a buffer, fixed during training
