"""Positional encodings: sinusoidal, learned absolute, 2-D grid, rotary."""

from .grid2d import Grid2DPositionalEmbedding
from .learned import LearnedPositionalEmbedding
from .rotary import RotaryEmbedding
from .sinusoidal import SinusoidalPositionalEncoding, sinusoidal_table

__all__ = [
    "Grid2DPositionalEmbedding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "sinusoidal_table",
]
