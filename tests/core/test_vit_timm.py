"""Our encoder-only ViT equals timm's VisionTransformer after checkpoint_filter_fn (random init)."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from tx_suite.models import VisionTransformer, checkpoint_filter_fn, load_timm_state_dict

SMALL = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_vit_equals_timm(global_pool):
    torch.manual_seed(0)
    timm_vit = TimmViT(**SMALL, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0, global_pool=global_pool).eval()
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


def test_incompatible_timm_weights_are_named():
    ours = VisionTransformer(**SMALL, d_model=32, n_layers=2, n_heads=4)
    sd = TimmViT(**SMALL, embed_dim=32, depth=2, num_heads=4, init_values=1e-5).state_dict()  # layer scale
    with pytest.raises(ValueError, match="ls1"):
        checkpoint_filter_fn(sd, ours)
