"""SceneJudge: a small CNN that reads digit, colour, size and position off a Captioned MNIST scene.

It is the independent instrument that scores generated images for caption fidelity (the
"classifier-based" evaluation of conditional generators, e.g. the attribute classifiers of
Ravuri and Vinyals 2019 or the object detector of DALL-E's MS-COCO analysis). Trained on real
composited scenes only, it never sees a generated image.
"""

from __future__ import annotations

import torch
from torch import nn

#: Captioned MNIST attribute -> number of classes (tx_suite.data.captions tables; models do not
#: import data, so the task passes the live values and these are only defaults).
ATTRIBUTE_CLASSES = {"digit": 10, "colour": 6, "size": 2, "position": 5}


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SceneJudge(nn.Module):
    """VGG-style CNN (Simonyan and Zisserman 2015) with one linear head per attribute.

    The last feature map is flattened rather than pooled globally, so the heads keep the spatial
    layout that position and size depend on.

    Args:
        width: channels of the first block (doubled per block, 3 blocks).
        dropout: dropout before the heads.
        image_size: side of the square input.
        classes: attribute name -> number of classes.

    Shapes: ``images`` ``(B, 3, H, W)`` in [0, 1] -> dict ``{attribute: (B, n_classes)}`` logits.
    """

    def __init__(self, width: int = 16, dropout: float = 0.2, image_size: int = 32,
                 classes: dict[str, int] | None = None):
        super().__init__()
        self.classes = dict(ATTRIBUTE_CLASSES if classes is None else classes)
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width),
                                      _block(2 * width, 4 * width), nn.Flatten())
        n_features = 4 * width * (image_size // 8) ** 2
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, 128),
                                   nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in self.classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(images))  # (B, 3, H, W) -> (B, 128)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted class per attribute: dict of ``(B,)`` long."""
        return {k: v.argmax(-1) for k, v in self(images).items()}
