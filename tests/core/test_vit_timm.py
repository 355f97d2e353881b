"""Our encoder-only ViT equals timm's VisionTransformer after checkpoint_filter_fn (random init)."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from reference_weights import randomize_norms_and_biases_
from tx_suite.models import VisionTransformer, checkpoint_filter_fn, load_timm_state_dict
from tx_suite.models.vit import load_timm_checkpoint

SMALL = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_vit_equals_timm(global_pool):
    torch.manual_seed(0)
    timm_vit = TimmViT(**SMALL, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0, global_pool=global_pool).eval()
    randomize_norms_and_biases_(timm_vit)  # at timm's init norm1 == norm2 and every block bias is 0
    ours = VisionTransformer(**SMALL, d_model=64, n_layers=3, n_heads=4, mlp_ratio=2.0,
                             global_pool=global_pool).eval()
    load_timm_state_dict(ours, timm_vit.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert (ours(x) - timm_vit(x)).abs().max() <= 1e-5
    assert (ours.forward_features(x) - timm_vit.forward_features(x)).abs().max() <= 1e-5


def test_vit_position_embedding_resampled_like_timm():
    torch.manual_seed(0)
    timm_vit = TimmViT(**SMALL, embed_dim=32, depth=2, num_heads=4, dynamic_img_size=True).eval()
    ours = VisionTransformer(**SMALL, d_model=32, n_layers=2, n_heads=4).eval()
    load_timm_state_dict(ours, timm_vit.state_dict())
    x = torch.randn(2, 1, 36, 36)  # 9 x 9 patches instead of 7 x 7
    assert (ours(x) - timm_vit(x)).abs().max() <= 1e-5
    # non-square grids, where rows and columns must not be swapped: 7 x 5 -> 9 x 11 patches
    wide = dict(SMALL, img_size=(28, 20))
    timm_wide = TimmViT(**wide, embed_dim=32, depth=2, num_heads=4, dynamic_img_size=True).eval()
    ours_wide = VisionTransformer(**wide, d_model=32, n_layers=2, n_heads=4).eval()
    load_timm_state_dict(ours_wide, timm_wide.state_dict())
    x_wide = torch.randn(2, 1, 36, 44)
    assert (ours_wide(x_wide) - timm_wide(x_wide)).abs().max() <= 1e-5
    # loading into a model built for the new size resamples the table once
    big = VisionTransformer(**{**SMALL, "img_size": 36}, d_model=32, n_layers=2, n_heads=4).eval()
    big.load_state_dict(checkpoint_filter_fn(timm_vit.state_dict(), big))
    assert big.patch_embed.pos_embed.shape == (1, 82, 32)
    assert (big(x) - timm_vit(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("loader", ["filter", "load_timm_checkpoint"])
def test_non_square_pretrained_grid_is_resampled_from_its_own_shape(loader):
    # A 2 x 8 grid has 16 positions, a square count: read as 4 x 4 it was resampled scrambled,
    # with no error. Given its grid it must equal timm's own model at the new size.
    torch.manual_seed(0)
    wide = dict(SMALL, img_size=(8, 32))
    timm_wide = TimmViT(**wide, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True).eval()
    ours = VisionTransformer(**{**wide, "img_size": (12, 32)}, d_model=16, n_layers=1, n_heads=2).eval()
    if loader == "filter":
        ours.load_state_dict(checkpoint_filter_fn(timm_wide.state_dict(), ours, old_grid_size=(2, 8)))
    else:
        load_timm_checkpoint(ours, timm_wide.state_dict(), old_grid_size=(2, 8))
    x = torch.randn(2, 1, 12, 32)
    assert (ours(x) - timm_wide(x)).abs().max() <= 1e-5
    # 2 x 7 = 14 positions cannot be a square grid: an error that says what to give
    odd = TimmViT(**dict(SMALL, img_size=(8, 28)), embed_dim=16, depth=1, num_heads=2).state_dict()
    with pytest.raises(ValueError, match="old_grid_size"):
        checkpoint_filter_fn(odd, ours)
    with pytest.raises(ValueError, match="old_grid_size"):
        load_timm_checkpoint(ours, odd)
    with pytest.raises(ValueError, match="3 x 5 grid of old_grid_size"):
        checkpoint_filter_fn(odd, ours, old_grid_size=(3, 5))


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_timm_checkpoint_resamples_once(wrapped):
    # 2 x 8 -> 7 x 28 patches: 196 positions, as timm's default 224-pixel grid (14 x 14), so timm's
    # own filter resampled a second time, reading the table as 14 x 14.
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    sd = TimmViT(img_size=(32, 128), patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=10).state_dict()
    ours = VisionTransformer(img_size=(112, 448), patch_size=16, d_model=16, n_layers=1, n_heads=2, num_classes=10)
    load_timm_checkpoint(ours, {"model": sd} if wrapped else sd, old_grid_size=(2, 8))
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=[7, 28], old_size=[2, 8], num_prefix_tokens=1)
    torch.testing.assert_close(ours.patch_embed.pos_embed.detach(), expected)


@pytest.mark.parametrize("loader", ["filter", "load_timm_checkpoint"])
def test_square_checkpoint_into_a_grid_of_the_same_count_is_resampled(loader):
    # 14 x 14 -> 7 x 28: both 196 patches, so the shapes match, but the table must still be resampled.
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    sd = TimmViT(img_size=224, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=10).state_dict()
    ours = VisionTransformer(img_size=(112, 448), patch_size=16, d_model=16, n_layers=1, n_heads=2, num_classes=10)
    if loader == "filter":
        ours.load_state_dict(checkpoint_filter_fn(sd, ours))
    else:
        load_timm_checkpoint(ours, sd)
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=[7, 28], old_size=[14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(ours.patch_embed.pos_embed.detach(), expected)


def test_incompatible_timm_weights_are_named():
    ours = VisionTransformer(**SMALL, d_model=32, n_layers=2, n_heads=4)
    sd = TimmViT(**SMALL, embed_dim=32, depth=2, num_heads=4, init_values=1e-5).state_dict()  # layer scale
    with pytest.raises(ValueError, match="ls1"):
        checkpoint_filter_fn(sd, ours)
