"""Context encoders (arXiv:1604.07379): the masks and the overlap weights against plain loops, the
channel-wise fully connected layer, the loss against a loop over the batch, the adversarial term's two
players, what a run saves, and bad settings."""
import itertools
import math

import pytest
import torch
from safetensors.torch import load_file

from mmssl import ENCODERS, save_encoder
from mmssl.config import ConfigError
from mmssl.objectives.context_encoder import (
    ChannelwiseFC,
    ContextEncoder,
    center_mask,
    loss_weights,
    region_mask,
    squares,
)
from mmssl.run import resolve_config


def tiny_objective(**kw):
    encoder = ENCODERS.build("convnet", widths=[4, 8])  # stride 4: a 16 px image is a 4x4 map
    return ContextEncoder(encoder, image_size=16, **kw)


@pytest.mark.parametrize("size, area, top, side", [(32, 0.25, 8, 16), (16, 0.25, 4, 8), (15, 0.25, 3, 8),
                                                   (128, 0.25, 32, 64), (20, 0.09, 7, 6)])
def test_center_mask_is_the_central_square(size, area, top, side):
    mask = center_mask(size, area)
    for i, j in itertools.product(range(size), range(size)):
        assert mask[i, j] == (top <= i < top + side and top <= j < top + side), (i, j)


def reference_weights(mask, overlap, weight):
    """1 in the hole; ``weight`` where a hole pixel lies within ``overlap`` px (rows and columns each); else 0."""
    B, H, W = mask.shape
    out = torch.zeros(B, H, W)
    for b, i, j in itertools.product(range(B), range(H), range(W)):
        if mask[b, i, j]:
            out[b, i, j] = 1
        elif mask[b, max(0, i - overlap):i + overlap + 1, max(0, j - overlap):j + overlap + 1].any():
            out[b, i, j] = weight
    return out


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_overlap_weights_frame_the_hole(overlap):
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([center_mask(12, 0.25), torch.rand(12, 12, generator=g) < 0.15])
    torch.testing.assert_close(loss_weights(masks, overlap, 10.0), reference_weights(masks, overlap, 10.0))
    # the centre square of side 6 with its frame: (6 + 2 * overlap)^2 scored pixels, 36 of them the hole
    w = loss_weights(masks[:1], overlap, 10.0)
    assert (w == 1).sum() == 36 and (w > 0).sum() == (6 + 2 * overlap) ** 2


def test_random_blocks_are_the_squares_at_the_drawn_corners():
    g = torch.Generator().manual_seed(1)
    tops, lefts = torch.randint(0, 9, (3, 4), generator=g), torch.randint(0, 9, (3, 4), generator=g)
    mask = squares(tops, lefts, 4, 12)
    for b, i, j in itertools.product(range(3), range(12), range(12)):
        inside = any(tops[b, k] <= i < tops[b, k] + 4 and lefts[b, k] <= j < lefts[b, k] + 4 for k in range(4))
        assert mask[b, i, j] == inside
    obj = tiny_objective(mask="random_blocks")
    torch.manual_seed(0)
    drawn = obj.draw_masks(64, torch.device("cpu"))
    cover = drawn.float().mean((1, 2))
    assert (cover > 0).all() and (cover <= 0.25).all() and cover.max() == 0.25  # four 4x4 squares, may overlap
    assert len({m.numpy().tobytes() for m in drawn}) > 32  # each image its own blocks


def test_random_regions_cover_the_area_with_smooth_blobs():
    torch.manual_seed(0)
    noise = torch.rand(8, 8, 8)
    mask = region_mask(noise, 32, 0.25)
    assert torch.equal(mask.sum((1, 2)), torch.full((8,), 256))  # exactly a quarter of each image
    # blobs, not salt: most dropped pixels have a dropped right-hand neighbour
    assert (mask[:, :, 1:] & mask[:, :, :-1]).sum() > 0.8 * mask[:, :, 1:].sum()
    obj = tiny_objective(mask="random_region")
    assert torch.equal(obj.draw_masks(4, torch.device("cpu")).sum((1, 2)), torch.full((4,), 64))


def test_channelwise_fc_is_one_linear_layer_per_channel():
    fc = ChannelwiseFC(3, 4)
    tokens = torch.randn(2, 4, 3)  # (B, N, D)
    out = fc(tokens)
    for d in range(3):
        expected = torch.nn.functional.linear(tokens[:, :, d], fc.weight[d].T, fc.bias[:, d])
        torch.testing.assert_close(out[:, :, d], expected)


@pytest.mark.parametrize("norm_target", [False, True])
def test_loss_matches_a_loop_over_the_batch(norm_target):
    """Centre hole of a 16 px image: rows and columns 4..11 dropped, 1 px frame weighted 10x."""
    obj = tiny_objective(overlap=1, norm_target=norm_target).eval()  # BatchNorm with running statistics: the same net in both passes
    x = torch.randn(3, 3, 16, 16)
    out = obj({"input": x})
    masked = x.clone()
    masked[:, :, 4:12, 4:12] = 0  # the dataset mean, after normalisation
    pred = obj.decoder(obj.encoder.forward_features(masked))
    target = x.clone()
    if norm_target:  # each image and channel standardised over the hole and its frame (rows, columns 3..12)
        for b, c in itertools.product(range(3), range(3)):
            scored = x[b, c, 3:13, 3:13]
            target[b, c] = (x[b, c] - scored.mean()) / (scored.var(unbiased=False) + 1e-6).sqrt()
    total, count = 0.0, 0
    for b in range(3):
        for i, j in itertools.product(range(16), range(16)):
            if 4 <= i < 12 and 4 <= j < 12:
                w = 1.0
            elif 3 <= i < 13 and 3 <= j < 13:
                w = 10.0
            else:
                continue
            total += w * ((pred[b, :, i, j] - target[b, :, i, j]) ** 2).sum()
            count += 3
    torch.testing.assert_close(out["loss"], total / count)
    obj.train()
    obj({"input": x})["loss"].backward()
    assert all(p.grad is not None for p in obj.parameters())


@pytest.mark.parametrize("norm_target", [False, True])
def test_reconstruction_keeps_the_context_and_paints_the_hole(norm_target):
    obj = tiny_objective(mask="random_blocks", norm_target=norm_target).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(3)
    shown = obj.reconstruct(x)
    torch.manual_seed(3)
    hole = obj.draw_masks(2, x.device)[:, None].expand_as(x)
    assert torch.equal(shown["masked"][hole], torch.zeros(int(hole.sum())))
    assert torch.equal(shown["reconstruction"][~hole], x[~hole])
    assert not torch.equal(shown["reconstruction"][hole], x[hole])


def test_the_saved_encoder_has_no_decoder(tmp_path):
    task, cfg = resolve_config("context_encoder_image", None, {"output_dir": str(tmp_path)},
                               ["image_size=16", "encoder.convnet.widths=4,8"])
    obj = task.build_objective(cfg)
    assert obj.export_encoder() is obj.encoder
    saved = load_file(save_encoder(obj.export_encoder(), tmp_path / "encoder") / "model.safetensors")
    assert set(saved) == set(obj.encoder.state_dict())
    assert not any(k.startswith(("decoder", "fc", "mix", "up")) for k in saved)
    decoder = {f"decoder.{k}" for k in obj.decoder.state_dict()}
    assert decoder and decoder <= set(obj.state_dict())


@pytest.mark.parametrize("override, needle", [("objective.mask=oval", "mask must be one of center"),
                                              ("objective.mask_area=1", "0 < mask_area < 1"),
                                              ("objective.overlap=-1", "overlap >= 0"),
                                              ("objective.adv_weight=1", "0 <= adv_weight < 1"),
                                              ("image_size=20", "divides image_size"),
                                              ("encoder.name=vit", "convnet or resnet")])
def test_bad_context_encoder_settings_are_one_config_error(override, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        task, cfg = resolve_config("context_encoder_image", None, {"output_dir": str(tmp_path)}, [override])
        task.build_objective(cfg)


def test_the_demo_scales_the_papers_overlap_to_its_image_size():
    _, cfg = resolve_config("context_encoder_image", None, {}, [])
    assert cfg.objective.mask == "center" and cfg.objective.overlap_weight == 10.0 and cfg.objective.norm_target
    assert cfg.objective.overlap == round(4 * cfg.image_size / 128) and math.isclose(cfg.objective.mask_area, 0.25)


def test_each_adversarial_loss_reaches_only_its_own_player():
    obj = tiny_objective(adv_weight=0.001)
    x, masks = torch.randn(4, 3, 16, 16), center_mask(16, 0.25).expand(4, 16, 16)
    pred = torch.randn(4, 3, 16, 16, requires_grad=True)
    adv_g, adv_d = obj.adversarial(x, pred, masks)
    adv_g.backward(retain_graph=True)
    assert pred.grad.abs().sum() > 0 and pred.grad[~masks[:, None].expand_as(pred)].abs().sum() == 0  # only the hole
    assert all(p.grad is None for p in obj.discriminator.parameters())
    pred.grad = None
    adv_d.backward()
    assert pred.grad is None and all(p.grad.abs().sum() > 0 for p in obj.discriminator.parameters())


def test_the_discriminator_learns_to_spot_paintings_and_the_painter_to_fool_it():
    torch.manual_seed(0)
    obj = tiny_objective(adv_weight=0.5)
    x = torch.randn(16, 3, 16, 16)
    discriminator = list(obj.discriminator.parameters())
    painter = [p for n, p in obj.named_parameters() if not n.startswith("discriminator.")]

    def losses():
        torch.manual_seed(1)
        out = obj({"input": x})
        return out["adv_g"], out["adv_d"], out["loss"]

    adv_g0, adv_d0, _ = losses()
    opt = torch.optim.Adam(discriminator, lr=1e-3)
    for _ in range(20):  # the whole loss, but only the discriminator steps: its loss must fall
        opt.zero_grad()
        losses()[2].backward()
        opt.step()
    adv_g1, adv_d1, _ = losses()
    assert adv_d1 < adv_d0 - 0.3 and adv_g1 > adv_g0, (adv_d0, adv_d1, adv_g0, adv_g1)
    opt = torch.optim.Adam(painter, lr=1e-3)
    for _ in range(20):  # now only the painter steps: it fools the fixed discriminator more
        opt.zero_grad()
        losses()[2].backward()
        opt.step()
    adv_g2, adv_d2, _ = losses()
    assert adv_g2 < adv_g1 and adv_d2 > adv_d1, (adv_g1, adv_g2, adv_d1, adv_d2)
