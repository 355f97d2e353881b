"""VQ-VAE image tokenizer: 32 x 32 RGB image <-> grid of discrete codes (stage 1 of DALL-E).

Architecture after van den Oord et al. 2017, "Neural Discrete Representation Learning", Sec. 4.1:
strided 4 x 4 convolutions down, residual blocks (ReLU, 3 x 3 conv, ReLU, 1 x 1 conv), a vector
quantizer, and the mirror image with transposed convolutions up. The quantizer is
``vector_quantize_pytorch.VectorQuantize`` with an EMA codebook (Sec. A.1 of the paper; Razavi et
al. 2019), k-means initialisation from the first training batch and replacement of dead codes
(codes whose EMA cluster size falls below a threshold are re-drawn from the current batch;
Dhariwal et al. 2020, "Jukebox", Sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from vector_quantize_pytorch import VectorQuantize


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``; shapes ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(), nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@dataclass
class VQVAEOutput:
    """``recon`` ``(B, C, H, W)``; ``codes`` ``(B, h, w)`` long; ``commit_loss`` scalar."""

    recon: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor


class VQVAE(nn.Module):
    """Convolutional VQ-VAE with a ``grid x grid`` code map, ``grid = image_size / downsample``.

    Args:
        in_channels: image channels.
        hidden: channels of the convolutional trunk.
        res_channels: bottleneck channels of the residual blocks.
        n_res_blocks: residual blocks in the encoder and in the decoder.
        downsample: 2, 4 or 8 (a 32 x 32 image gives a 16 x 16, 8 x 8 or 4 x 4 grid).
        codebook_size: number of codes K.
        codebook_dim: dimension of each code.
        decay: EMA decay of the codebook (paper: 0.99).
        commitment_weight: beta of the commitment loss ``||z_e - sg[e]||^2`` (paper Eq. 3: 0.25).
        kmeans_init: initialise the codebook by k-means on the first training batch (an eval pass
            before it, e.g. Lightning's sanity check on validation images, does not).
        threshold_ema_dead_code: re-draw codes whose EMA usage falls below this count (0 = off).
        rotation_trick: gradient through the quantizer by the rotation trick (Fifty et al. 2024)
            instead of the straight-through estimator.

    Images are ``(B, C, H, W)`` floats in [0, 1]; the decoder predicts them directly.

    Raises:
        ValueError: ``downsample`` is not a power of two between 2 and 8.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, res_channels: int = 32,
                 n_res_blocks: int = 2, downsample: int = 4, codebook_size: int = 512,
                 codebook_dim: int = 32, decay: float = 0.99, commitment_weight: float = 0.25,
                 kmeans_init: bool = True, threshold_ema_dead_code: float = 2.0,
                 rotation_trick: bool = True):
        super().__init__()
        if downsample not in (2, 4, 8):
            raise ValueError(f"downsample must be 2, 4 or 8, got {downsample}")
        n_down = int(math.log2(downsample))
        self.downsample = downsample
        self.codebook_size = codebook_size

        enc: list[nn.Module] = []
        for i in range(n_down):
            enc += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 4, stride=2, padding=1),
                    nn.ReLU()]
        enc += [nn.Conv2d(hidden, hidden, 3, padding=1)]
        enc += [ResidualBlock(hidden, res_channels) for _ in range(n_res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(hidden, codebook_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        self._quantizer_kwargs = dict(
            dim=codebook_dim, codebook_size=codebook_size, decay=decay,
            commitment_weight=commitment_weight, kmeans_init=kmeans_init, kmeans_iters=10,
            threshold_ema_dead_code=threshold_ema_dead_code, rotation_trick=rotation_trick,
            accept_image_fmap=True,
        )
        # Off until enable_codebook_sync(): the library would otherwise decide from whether a
        # process group happens to exist at construction time.
        self.quantizer = VectorQuantize(**self._quantizer_kwargs, sync_codebook=False)
        self.codebook_synced = False

        dec: list[nn.Module] = [nn.Conv2d(codebook_dim, hidden, 3, padding=1)]
        dec += [ResidualBlock(hidden, res_channels) for _ in range(n_res_blocks)]
        dec += [nn.ReLU()]
        for i in range(n_down):
            last = i == n_down - 1
            dec += [nn.ConvTranspose2d(hidden, in_channels if last else hidden, 4, stride=2,
                                       padding=1)]
            if not last:
                dec += [nn.ReLU()]
        self.decoder = nn.Sequential(*dec)

    def enable_codebook_sync(self) -> bool:
        """All-reduce the EMA codebook statistics over the ranks of the default process group.

        Under data parallelism each rank quantizes a different shard of the batch; the EMA update
        (van den Oord et al. 2017, Sec. A.1: cluster sizes and summed assignments) must add up the
        statistics of all shards, exactly as one process on the whole batch would, and k-means
        initialisation and dead-code replacement must draw from all shards. vector-quantize-pytorch
        does this when its quantizer is built with ``sync_codebook=True``, which needs the process
        group to exist. Lightning builds the model before it starts DDP, so this rebuilds the
        quantizer (same state) once the group is up; call it from the task's ``configure_model``.

        Returns:
            Whether the codebook is now synchronised: False with one process or no process group
            (nothing changes then).
        """
        if self.codebook_synced:
            return True
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return False
        state = self.quantizer.state_dict()
        device = next(self.quantizer.buffers()).device
        quantizer = VectorQuantize(**self._quantizer_kwargs, sync_codebook=True).to(device)
        quantizer.load_state_dict(state)
        self.quantizer = quantizer
        self.codebook_synced = True
        return True

    def _check_size(self, images: torch.Tensor) -> None:
        h, w = images.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"image size {h}x{w} is not a multiple of the VQ-VAE's downsample factor {self.downsample}")

    def grid_size(self, image_size: int = 32) -> int:
        """Side of the code grid for a square image of side ``image_size``."""
        return image_size // self.downsample

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """Encode, quantize, decode. ``images`` ``(B, C, H, W)`` -> :class:`VQVAEOutput`.

        Raises:
            ValueError: ``H`` or ``W`` is not a multiple of ``downsample`` (the reconstruction
                would come back smaller than the input).
        """
        self._check_size(images)
        z = self.encoder(images)  # (B, codebook_dim, h, w)
        zq, codes, commit_loss = self._quantize(z)
        return VQVAEOutput(self.decoder(zq), codes, commit_loss.sum())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, h, w)`` long codes in ``[0, codebook_size)``.

        Call in eval mode: in training mode the quantizer updates its EMA codebook.

        Raises:
            ValueError: ``H`` or ``W`` is not a multiple of ``downsample``.
        """
        self._check_size(images)
        _, codes, _ = self._quantize(self.encoder(images))
        return codes

    def _quantize(self, z: torch.Tensor):
        """``self.quantizer(z)``, except that only a training batch may run the k-means codebook
        initialisation: the library runs it on whatever batch comes first, in eval mode too, and
        Lightning's sanity check sends validation images (held-out test digits) before any training
        batch. An eval pass before it sees the not yet initialised (all-zero) codebook."""
        codebook = getattr(self.quantizer, "_codebook", None)
        initted = getattr(codebook, "initted", None)
        if self.training or not torch.is_tensor(initted) or bool(initted):
            return self.quantizer(z)
        initted.fill_(True)
        try:
            return self.quantizer(z)
        finally:
            initted.fill_(False)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` long codes -> ``(B, C, H, W)`` images, clamped to [0, 1].

        Raises:
            ValueError: a code outside ``[0, codebook_size)``.
        """
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        zq = self.quantizer.get_output_from_indices(codes)  # (B, h, w) -> (B, codebook_dim, h, w)
        return self.decoder(zq).clamp(0.0, 1.0)
