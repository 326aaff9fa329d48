"""CPC on images (CPC v2, arXiv:1905.09272): the patch grid's geometry, the row context's causality,
the image InfoNCE against a plain loop over images, columns, rows and steps, and cpc_audio's loss
unchanged by the objective's generalisation. CPC on video: pooled frames, and dense predictive coding
(arXiv:1909.04656) against a plain loop over clips, cells, times and steps."""
import pytest
import torch
import torch.nn.functional as F

import mmssl.tasks  # noqa: F401
from mmssl.config import ConfigError
from mmssl.encoders.io import build_encoder
from mmssl.objectives.cpc_image import CPCImageSettings, RowContext
from mmssl.registry import OBJECTIVES
from mmssl.run import resolve_config


def patch_grid(patch=4, stride=2, widths=(8, 8)):
    return build_encoder({"name": "patch_grid", "kwargs": {
        "encoder": {"name": "convnet", "kwargs": {"widths": list(widths)}}, "patch": patch, "stride": stride}})


def test_patch_grid_cuts_overlapping_patches_row_major_and_encodes_each_alone():
    enc = patch_grid(patch=8, stride=4).eval()
    assert enc.grid(32, 32) == (7, 7) and enc.grid(32, 20) == (7, 4) and enc.grid(30, 30) == (6, 6)
    x = torch.randn(2, 3, 32, 20)
    p = enc.patches(x)  # (2, 28, 3, 8, 8)
    assert p.shape == (2, 28, 3, 8, 8)
    for n, (r, c) in enumerate([(r, c) for r in range(7) for c in range(4)]):
        torch.testing.assert_close(p[:, n], x[:, :, 4 * r:4 * r + 8, 4 * c:4 * c + 8], rtol=0, atol=0)
    tokens = enc.forward_features(x)
    assert tokens.shape == (2, 28, enc.embed_dim)
    alone = enc.encoder.pool(enc.encoder.forward_features(x[:, :, 8:16, 4:12]))  # row 2, column 1
    torch.testing.assert_close(tokens[:, 2 * 4 + 1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc.pool(tokens), tokens.mean(1))
    # pixels below the first six rows of patches change only the last row's tokens
    y = x.clone()
    y[:, :, 28:] += 1
    moved = (enc.forward_features(y) - tokens).abs().amax(-1).view(2, 7, 4)
    assert moved[:, :6].max() == 0 and moved[:, 6].min() > 0
    with pytest.raises(ValueError, match="smaller than one 8 px patch"):
        enc.forward_features(torch.randn(1, 3, 6, 32))


def test_standardized_patches_and_colour_dropping_in_training_only():
    enc = patch_grid(patch=4, stride=2)
    enc.standardize = True
    x = torch.rand(2, 3, 8, 8)
    seen = []
    enc.encoder.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))  # what the conv net reads
    enc.forward_features(x)
    p = seen[-1].view(2, 9, 3, 4, 4)
    torch.testing.assert_close(p.mean(dim=(-2, -1)), torch.zeros(2, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.square().mean(dim=(-3, -2, -1)), torch.ones(2, 9), atol=1e-4, rtol=0)
    objective = OBJECTIVES.build("cpc_image", encoder=enc, patch_size=4, patch_stride=2, steps=2, patch_norm=True)
    objective({"input": x})  # training: each patch keeps one channel, the others are faint noise
    rms = seen[-1].view(2, 9, 3, 16).std(-1)  # (B, N, C): per-channel spread after standardising
    assert ((rms > 0.5).sum(-1) == 1).all()
    objective.eval()
    objective({"input": x})  # evaluation: every channel as it is
    torch.testing.assert_close(seen[-1], seen[0])


def test_row_context_never_reads_a_lower_row():
    torch.manual_seed(0)
    context = RowContext(dim=6, hidden=5, layers=3)
    z = torch.randn(2, 6, 7, 5)
    c = context(z)
    for row in range(1, 7):
        lower = z.clone()
        lower[:, :, row:] = torch.randn_like(lower[:, :, row:])  # rows at and below ``row`` perturbed
        c2 = context(lower)
        torch.testing.assert_close(c2[:, :, :row], c[:, :, :row], rtol=0, atol=0)
        assert (c2[:, :, row] - c[:, :, row]).abs().max() > 1e-3
    # and it does read the rows above, across columns (3 blocks of a 3x3 reach 6 rows up, 3 columns aside)
    upper = z.clone()
    upper[:, :, 0, 0] += 1
    assert (context(upper)[:, :, 6, 3] - c[:, :, 6, 3]).abs().max() > 0


def reference_loss(objective, x, neg_index):
    """The image InfoNCE by plain loops: for image b, column w, step k and every row t with a row t + k
    below it, W_k c[b, t, w] against z[b, t + k, w] and the drawn negatives, each decoded from its flat
    index into (image, column, row); negatives are drawn for rows 0 .. rows - 2 of each column."""
    enc = objective.encoder
    rows, cols = enc.grid(x.shape[-2], x.shape[-1])
    z = enc.forward_features(x).view(x.shape[0], rows, cols, -1)  # (B, rows, cols, D)
    c = objective.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, rows, cols, D)
    K, contexts = objective.steps, rows - 1

    def cand(j):  # flat index into the pool, laid out as one sequence per (image, column)
        seq, row = divmod(int(j), rows)
        return z[seq // cols, row, seq % cols]

    def unit(v):
        return F.normalize(v, dim=0) if objective.temperature else v

    scale = 1 / objective.temperature if objective.temperature else 1.0
    per_step = []
    for k in range(1, K + 1):
        losses = []
        for b in range(x.shape[0]):
            for w in range(cols):
                for t in range(rows - k):
                    n = (b * cols + w) * contexts + t  # the position's row in neg_index
                    pred = unit(c[b, t, w] @ objective.predictors[k - 1]) * scale
                    pos_flat = (b * cols + w) * rows + t + k
                    logits = [pred @ unit(z[b, t + k, w])]
                    logits += [pred @ unit(cand(j)) for j in neg_index[n] if int(j) != pos_flat]
                    losses.append(-torch.log_softmax(torch.stack(logits), 0)[0])
        per_step.append(torch.stack(losses).mean())
    return torch.stack(per_step).mean()


@pytest.mark.parametrize("negatives_from, temperature", [("batch", None), ("batch", 0.1), ("others", None)])
def test_image_info_nce_matches_a_loop_over_images_columns_and_rows(negatives_from, temperature):
    torch.manual_seed(0)
    objective = OBJECTIVES.build("cpc_image", encoder=patch_grid(), steps=2, num_negatives=6,
                                 negatives_from=negatives_from, temperature=temperature, patch_size=4,
                                 patch_stride=2, context_dim=5, context_layers=2).eval()
    x = torch.randn(2, 3, 12, 10)  # a 5 x 4 grid: 2 images x 4 columns; 4 rows predict 1 ahead, 3 rows 2 ahead
    torch.manual_seed(1)
    out = objective({"input": x})
    torch.manual_seed(1)  # the same draw the forward made: (sequences * 4 context rows, M) indices
    neg_index = objective.sample_negatives(2 * 4, 5, 4, x.device)
    torch.testing.assert_close(out["loss"], reference_loss(objective, x, neg_index), rtol=1e-5, atol=1e-5)
    assert set(out) == {"loss", "acc", "acc_step1", "acc_step2", "std"}


def test_negatives_come_from_other_locations_and_other_images_by_default():
    assert CPCImageSettings().negatives_from == "batch"  # CPC v2: other patches of the batch
    objective = OBJECTIVES.build("cpc_image", encoder=patch_grid(), patch_size=4, patch_stride=2, steps=2)
    torch.manual_seed(0)
    rows, cols, images = 7, 7, 4
    neg = objective.sample_negatives(images * cols, rows, rows - 2, torch.device("cpu"))  # flat: (image, col, row)
    image_of, column_of = neg // (cols * rows), neg // rows % cols
    own_image = torch.arange(images).repeat_interleave(cols * (rows - 2))[:, None]
    assert (image_of != own_image).float().mean() > 0.6  # 3 of 4 images are others
    assert len(column_of.unique()) == cols and len(image_of.unique()) == images


def test_bad_grids_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="cpc_image needs a patch_grid encoder of 8 px patches 4 px apart"):
        OBJECTIVES.build("cpc_image", encoder=patch_grid(), patch_size=8, patch_stride=4)
    with pytest.raises(ConfigError, match="gives 7 rows of 8 px patches 4 px apart, too few to predict"):
        resolve_config("cpc_image", None, {"output_dir": str(tmp_path)}, ["objective.steps=7"])
    with pytest.raises(ConfigError, match="patches must be 1..32 px"):
        resolve_config("cpc_image", None, {"output_dir": str(tmp_path)}, ["objective.patch_size=40"])


# cpc_audio's loss, accuracy and gradients on a fixed draw, as computed before CPC.score was split out of
# forward (the same numbers to the last printed digit); the objective's generalisation must not move them.
AUDIO = {"batch": (1.797381043434143, 0.1568627506494522, -0.04870682954788208, -0.2506914436817169),
         "sequence": (2.6965105533599854, 0.20915032923221588, 0.1339469999074936, -3.3985977172851562),
         "others": (1.868180274963379, 0.16339869797229767, 0.04794100299477577, -0.2810191512107849)}


def test_cpc_audio_is_unchanged():
    torch.manual_seed(0)
    enc = build_encoder({"name": "sequence", "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": 8}},
                                                        "context": {"name": "gru", "kwargs": {"dim": 6}}}})
    for mode, temperature in (("batch", None), ("sequence", 0.1), ("others", None)):
        objective = OBJECTIVES.build("cpc", encoder=enc, steps=3, num_negatives=5, negatives_from=mode,
                                     temperature=temperature)
        out = objective({"input": torch.randn(3, 3200)})
        out["loss"].backward()  # gradients accumulate in the shared encoder, as when the numbers were taken
        grads = (objective.predictors.grad.flatten(), torch.cat([p.grad.flatten() for p in enc.parameters()]))
        loss, acc, *sums = AUDIO[mode]
        assert (out["loss"].item(), out["acc"].item()) == pytest.approx((loss, acc), rel=1e-5, abs=1e-6), mode
        for g, expected in zip(grads, sums):
            # A sum of hundreds of float32 terms that largely cancel: the order of its additions, which the
            # thread count changes, moves it by about 1e-8 of the terms' absolute sum; any change to the loss
            # or its gradients moves it by far more than the 1e-6 allowed.
            assert g.sum().item() == pytest.approx(expected, abs=1e-6 * g.abs().sum().item()), mode


def test_video_info_nce_matches_a_loop_over_videos_and_frames():
    torch.manual_seed(0)
    frames = build_encoder({"name": "convnet", "kwargs": {"widths": [8, 8]}})
    objective = OBJECTIVES.build("cpc_video", encoder=frames, steps=2, num_negatives=5, temperature=0.1,
                                 spatial="pooled").eval()
    x = torch.randn(3, 5, 3, 8, 8)  # 3 clips of 5 frames
    torch.manual_seed(1)
    out = objective({"frames": x})
    torch.manual_seed(1)
    neg_index = objective.sample_negatives(3, 5, 3, x.device)  # (clips * usable frames, M), flat (clip, frame)
    # every frame encoded alone and pooled; the context reads the clip's frames in order
    z = torch.stack([torch.stack([frames.pool(frames.forward_features(x[b, t:t + 1]))[0] for t in range(5)])
                     for b in range(3)])  # (3, 5, D)
    c = objective.context(z)
    losses = {k: [] for k in (1, 2)}
    for k in (1, 2):
        for b in range(3):
            for t in range(3):
                pred = F.normalize(c[b, t] @ objective.predictors[k - 1], dim=0) / 0.1
                cands = [z[b, t + k]] + [z[j // 5, j % 5] for j in neg_index[b * 3 + t].tolist() if j != b * 5 + t + k]
                logits = torch.stack([pred @ F.normalize(v, dim=0) for v in cands])
                losses[k].append(-torch.log_softmax(logits, 0)[0])
    reference = torch.stack([torch.stack(v).mean() for v in losses.values()]).mean()
    torch.testing.assert_close(out["loss"], reference, rtol=1e-5, atol=1e-5)
    # the context is causal in time: later frames leave earlier contexts alone
    later = z.clone()
    later[:, 3:] += 1
    torch.testing.assert_close(objective.context(later)[:, :3], c[:, :3])


def dense_convnet(widths=(8, 8, 8)):
    return build_encoder({"name": "dense_convnet", "kwargs": {"widths": list(widths), "channels": 3}})


def dense_reference(objective, x, neg_index, grid=None):
    """Dense predictive coding by plain loops: every frame encoded alone; for clip b, cell (i, j), time t and
    step k, W_k c[b, i, j, t] against z[b, i, j, t + k] and the drawn negatives, each decoded from its flat
    index into (clip, cell, time); each cell's context reads that cell's latents in time order."""
    enc = objective.encoder
    B, T = x.shape[:2]
    maps = torch.stack([torch.stack([enc.feature_map(x[b, t:t + 1])[0] for t in range(T)]) for b in range(B)])
    if grid:
        maps = F.adaptive_avg_pool2d(maps.flatten(0, 1), grid).unflatten(0, (B, T))  # (B, T, D, g, g)
    h, w = maps.shape[-2:]
    z = {(b, i, j): maps[b, :, :, i, j] for b in range(B) for i in range(h) for j in range(w)}  # each (T, D)
    c = {key: objective.context(seq[None])[0] for key, seq in z.items()}
    K, usable, tau = objective.steps, T - objective.steps, objective.temperature

    def cand(flat):
        seq, t = divmod(int(flat), T)
        b, cell = divmod(seq, h * w)
        return z[b, cell // w, cell % w][t]

    per_step = []
    for k in range(1, K + 1):
        losses = []
        for b in range(B):
            for i in range(h):
                for j in range(w):
                    seq = (b * h + i) * w + j
                    for t in range(usable):
                        pred = F.normalize(c[b, i, j][t] @ objective.predictors[k - 1], dim=0) / tau
                        pos = seq * T + t + k
                        cands = [z[b, i, j][t + k]] + [cand(n) for n in neg_index[seq * usable + t] if int(n) != pos]
                        logits = torch.stack([pred @ F.normalize(v, dim=0) for v in cands])
                        losses.append(-torch.log_softmax(logits, 0)[0])
        per_step.append(torch.stack(losses).mean())
    return torch.stack(per_step).mean()


@pytest.mark.parametrize("negatives_from, grid", [("batch", 0), ("cell", 0), ("clip", 0), ("others", 2)])
def test_dense_video_info_nce_matches_a_loop_over_clips_cells_and_times(negatives_from, grid):
    torch.manual_seed(0)
    objective = OBJECTIVES.build("cpc_video", encoder=dense_convnet(), steps=2, num_negatives=6, temperature=0.1,
                                 negatives_from=negatives_from, grid=grid).eval()
    x = torch.randn(2, 5, 3, 24, 24)  # 2 clips of 5 frames, a 3 x 3 map (2 x 2 cells pooled with grid=2)
    torch.manual_seed(1)
    out = objective({"frames": x})
    cells = grid * grid if grid else 9
    torch.manual_seed(1)  # the same draw the forward made
    if negatives_from in ("cell", "clip"):
        neg_index = objective.sample_dense_negatives(2, cells, 5, 3, x.device)
    else:
        neg_index = objective.sample_negatives(2 * cells, 5, 3, x.device)
    torch.testing.assert_close(out["loss"], dense_reference(objective, x, neg_index, grid), rtol=1e-5, atol=1e-5)
    assert set(out) == {"loss", "acc", "acc_step1", "acc_step2", "std"}


@pytest.mark.parametrize("context", ["gru", "conv_gru"])
def test_dense_latents_keep_every_cell_and_the_context_never_reads_a_later_frame(context):
    torch.manual_seed(0)
    objective = OBJECTIVES.build("cpc_video", encoder=dense_convnet(), steps=2, context=context).eval()
    x = torch.randn(2, 6, 3, 32, 24)  # a 4 x 3 map: 12 sequences per clip
    z, c = objective.contexts(x)
    assert z.shape == c.shape == (2 * 12, 6, 8)
    cell = objective.encoder.feature_map(x[1, 4:5])[0, :, 2, 1]  # clip 1, frame 4, row 2, column 1
    torch.testing.assert_close(z[12 + 2 * 3 + 1, 4], cell, rtol=1e-5, atol=1e-6)
    for t in range(5):
        later = x.clone()
        later[:, t + 1] = torch.randn_like(later[:, t + 1])  # frame t + 1 changed
        c2 = objective.contexts(later)[1]
        torch.testing.assert_close(c2[:, :t + 1], c[:, :t + 1], rtol=0, atol=0)  # c_<=t, so W_k c_t, unchanged
        assert (c2[:, t + 1] - c[:, t + 1]).abs().max() > 1e-4
    if context == "conv_gru":  # 3 x 3 convolutions: a cell's context reaches farther neighbours step by step
        maps = torch.randn(1, 3, 8, 9, 9)
        nudged = maps.clone()
        nudged[0, 0, :, 4, 4] += 1  # the centre cell at t = 0
        moved = (objective.context(nudged) - objective.context(maps)).abs().amax(2)[0] > 0  # (T, 9, 9)
        ring = (torch.arange(9)[:, None] - 4).abs().maximum((torch.arange(9)[None, :] - 4).abs())  # Chebyshev
        for t in range(3):  # one ring at t = 0 (the candidate's conv), then two a step (reset gate, candidate)
            assert torch.equal(moved[t], ring <= 2 * t + 1), t
    pooled = OBJECTIVES.build("cpc_video", encoder=dense_convnet(), steps=2, grid=2).eval()
    assert pooled.latents(x).shape == (2 * 4, 6, 8)


def test_cell_negatives_stay_at_the_cell_and_clip_negatives_in_the_clip():
    clips, cells, T, usable = 4, 9, 6, 4
    own_clip = torch.arange(clips).repeat_interleave(cells * usable)[:, None]
    own_cell = torch.arange(cells).repeat_interleave(usable).repeat(clips)[:, None]
    for mode in ("cell", "clip"):
        objective = OBJECTIVES.build("cpc_video", encoder=dense_convnet(), steps=2, negatives_from=mode)
        torch.manual_seed(0)
        neg = objective.sample_dense_negatives(clips, cells, T, usable, torch.device("cpu"))  # flat: (clip, cell, t)
        assert neg.shape == (clips * cells * usable, 128)
        clip, cell, t = neg // (T * cells), neg // T % cells, neg % T
        if mode == "cell":  # the cell's own place, in every clip, at every time
            assert (cell == own_cell).all() and len(clip.unique()) == clips and len(t.unique()) == T
        else:  # the position's own clip, at every place and time
            assert (clip == own_clip).all() and len(cell.unique()) == cells and len(t.unique()) == T


def test_bad_video_settings_are_one_line():
    for kwargs, match in [({"spatial": "sparse"}, "spatial must be 'dense' or 'pooled'"),
                          ({"grid": -1}, "grid must be 0"),
                          ({"spatial": "pooled", "negatives_from": "cell"}, "needs spatial=.dense."),
                          ({"jitter": 1, "grid": 2}, "jitter must be >= 0 cells and needs spatial='dense' with grid=0"),
                          ({"context": "conv_gru", "spatial": "pooled"}, "conv_gru. reads maps of cells")]:
        with pytest.raises(ValueError, match=match):
            OBJECTIVES.build("cpc_video", encoder=dense_convnet(), **kwargs)


def test_jitter_encodes_each_frame_from_its_own_window_and_follows_scene_cells():
    torch.manual_seed(0)
    objective = OBJECTIVES.build("cpc_video", encoder=dense_convnet(), steps=2, jitter=1)
    objective.encoder.eval()  # BatchNorm on running statistics, so each window's map is its own
    x = torch.randn(2, 4, 3, 40, 32)  # 5 x 4 cells of 8 px; windows of 4 x 3 cells; 3 x 2 scene cells in all
    torch.manual_seed(1)
    z = objective.latents(x)  # training mode: jittered
    assert z.shape == (2 * 3 * 2, 4, 8)
    torch.manual_seed(1)
    off = torch.randint(2, (2 * 4, 2))  # the offsets the forward drew, (dy, dx) cells per (clip, frame)
    for b in range(2):
        for t in range(4):
            dy, dx = off[b * 4 + t].tolist()
            window = x[b, t, :, 8 * dy : 40 - 8 * (1 - dy), 8 * dx : 32 - 8 * (1 - dx)]
            fmap = objective.encoder.feature_map(window[None])[0]  # (8, 4, 3)
            for u in range(3):
                for v in range(2):  # scene cell (u + 1, v + 1) sits at (u + 1 - dy, v + 1 - dx) of this map
                    torch.testing.assert_close(z[(b * 3 + u) * 2 + v, t], fmap[:, u + 1 - dy, v + 1 - dx],
                                               rtol=1e-5, atol=1e-6)
    objective.eval()  # evaluation: the whole frame, every cell
    assert objective.latents(x).shape == (2 * 5 * 4, 4, 8)
