"""Task-free models: front-end(s) + core composition + head (plain ``nn.Module``s)."""

from .vit import VisionTransformer, checkpoint_filter_fn, load_timm_state_dict

__all__ = ["VisionTransformer", "checkpoint_filter_fn", "load_timm_state_dict"]
