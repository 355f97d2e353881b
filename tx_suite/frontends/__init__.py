"""Input front-ends: token embeddings (text), ViT patches + CLS (images), image-token grids."""

from .conv_stem import ConvStem
from .image_token_grid import ImageTokenGrid
from .patch_embedding import PatchEmbedding
from .text_image_sequence import TextImageSequence
from .token_embedding import TokenEmbedding

__all__ = ["ConvStem", "ImageTokenGrid", "PatchEmbedding", "TextImageSequence", "TokenEmbedding"]
