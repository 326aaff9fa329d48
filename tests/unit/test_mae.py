"""MAE (arXiv:2111.06377): random and tube masking, the loss against a plain reference, and the
embed-only-the-visible-patches path."""

import pytest
import torch

from mmssl import ENCODERS, OBJECTIVES
from mmssl.objectives.mae import MAE, random_masking

TINY_VIT = {"dim": 32, "depth": 2, "heads": 4}

def tiny_mae(**kw):
    vit = ENCODERS.build("vit", input_size=[16, 16], patch=[4, 4], **TINY_VIT)
    return OBJECTIVES.build("mae", encoder=vit, decoder_dim=16, decoder_depth=1, decoder_heads=2, **kw)


@pytest.mark.parametrize("n, ratio", [(16, 0.75), (10, 0.5), (7, 0.6), (64, 0.9)])
def test_random_masking_keeps_round_n_and_restores(n, ratio):
    tokens = torch.randn(3, n, 5)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    keep = round(n * (1 - ratio))
    assert visible.shape == (3, keep, 5) and torch.equal(mask.sum(1), torch.full((3,), float(n - keep)))
    assert torch.equal(mask, (ids_restore >= keep).float())  # positions past `keep` in the shuffle are masked
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, 5)), visible)
    shuffled = torch.gather(tokens, 1, ids_shuffle[..., None].expand(-1, -1, 5))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, 5)), tokens)


def test_tube_mask_is_constant_over_time():
    vit = ENCODERS.build("vit", input_size=[6, 8, 8], patch=[2, 4, 4], **TINY_VIT)  # grid (3, 2, 2)
    mae = OBJECTIVES.build("mae", encoder=vit, mask_ratio=0.6, masking="tube", decoder_dim=16, decoder_depth=2,
                           decoder_heads=2)
    for _ in range(5):
        visible, mask, _ = mae.mask(torch.randn(3, 12, 32))
        per_time = mask.reshape(3, 3, 4)  # (B, t, h * w)
        assert (per_time == per_time[:, :1]).all()
        # round(4 * 0.4) = 2 whole tubes kept, not round(12 * 0.4) = 5 tokens
        assert visible.shape == (3, 6, 32)
    assert torch.isfinite(mae({"input": torch.randn(2, 3, 6, 8, 8)})["loss"])
    with pytest.raises(ValueError, match="tube masking needs"):
        tiny_mae(masking="tube")


def test_mae_validates_arguments():
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="masking must be"):
        tiny_mae(masking="block")
    with pytest.raises(ValueError, match="ResNet lacks patchify"):
        MAE(ENCODERS.build("resnet"))


def reference_mae_loss(x, pred, mask, p, visible_too=False):
    """Loop over samples and masked patches (every patch with ``visible_too``); a patch is
    x[:, i*p:(i+1)*p, j*p:(j+1)*p] laid out (p, p, c)."""
    B, _, H, W = x.shape
    losses = []
    for b in range(B):
        for i in range(H // p):
            for j in range(W // p):
                n = i * (W // p) + j
                if mask[b, n] == 1 or visible_too:
                    t = x[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1)
                    t = (t - t.mean()) / (t.var() + 1e-6) ** 0.5
                    losses.append(((pred[b, n] - t) ** 2).mean())
    return torch.stack(losses).mean()


def test_mae_loss_matches_reference_and_every_parameter_learns():
    torch.manual_seed(0)
    mae = tiny_mae()
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(1)
    out = mae({"input": x})
    torch.manual_seed(1)  # the same masks again
    latent, mask, ids_restore = mae.forward_encoder(x)
    pred = mae.forward_decoder(latent, ids_restore)
    assert mask.sum() == 3 * 12 and latent.shape == (3, 4, 32)
    torch.testing.assert_close(out["loss"], reference_mae_loss(x, pred, mask, 4))
    # the head on the masked positions only gives those rows of the full prediction
    masked = ids_restore.argsort(dim=1)[:, 4:]
    assert (torch.gather(mask, 1, masked) == 1).all()
    torch.testing.assert_close(mae.forward_decoder(latent, ids_restore, masked_only=True),
                               torch.gather(pred, 1, masked[..., None].expand(-1, -1, pred.shape[2])))
    assert 0 < out["std"] < 1
    out["loss"].backward()
    for name, param in mae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert mae.export_encoder() is mae.encoder


def test_loss_on_visible_patches_scores_every_patch():
    torch.manual_seed(0)
    mae = tiny_mae(loss_on_visible=True)
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(1)
    out = mae({"input": x})
    torch.manual_seed(1)
    latent, mask, ids_restore = mae.forward_encoder(x)
    pred = mae.forward_decoder(latent, ids_restore)
    torch.testing.assert_close(out["loss"], reference_mae_loss(x, pred, mask, 4, visible_too=True))
    assert not torch.allclose(out["loss"], reference_mae_loss(x, pred, mask, 4))
    out["loss"].backward()
    assert mae.mask_token.grad.abs().sum() > 0 and mae.encoder.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruct_keeps_visible_patches(norm_pix_loss):
    mae = tiny_mae(norm_pix_loss=norm_pix_loss)
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(3)
    out = mae.reconstruct(x)
    torch.manual_seed(3)
    _, mask, _ = mae.forward_encoder(x)
    assert all(v.shape == x.shape for v in out.values()) and out["original"] is x
    patches = {k: mae.encoder.patchify.to_patches(v) for k, v in out.items()}
    visible, masked = mask == 0, mask == 1
    assert torch.equal(patches["reconstruction"][visible], patches["original"][visible])
    assert torch.equal(patches["masked"][visible], patches["original"][visible])
    assert patches["masked"][masked].abs().sum() == 0
    assert not torch.equal(patches["reconstruction"][masked], patches["original"][masked])


def test_embedding_only_the_visible_patches_equals_embedding_all_then_masking():
    torch.manual_seed(0)
    mae = tiny_mae()
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(5)
    latent, mask, ids_restore = mae.forward_encoder(x)
    torch.manual_seed(5)  # the same noise, through the embed-everything path
    visible, mask2, ids_restore2 = mae.mask(mae.encoder.embed(x))
    assert torch.equal(mask, mask2) and torch.equal(ids_restore, ids_restore2)
    torch.testing.assert_close(latent, mae.encoder.forward_tokens(visible))
