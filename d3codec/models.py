"""Networks of the field's evaluation protocol.

ConvNet-3 follows the DatasetCondensation / DM / MTT code: depth × [Conv 3×3 (width) →
instance norm (GroupNorm(width, width, affine)) → ReLU → AvgPool 2×2] → Linear. For 28×28 inputs
the first convolution pads by 3 so the feature map is 32×32, as in that code.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("convnet3",)


class ConvNet(nn.Module):
    """ConvNet-D (D = ``depth``) for (N, C, H, W) float32 inputs, normalised.

    ``embed(x)`` returns the flattened features before the classifier: (N, width · h · w) with
    h = w = (H + extra padding) / 2^depth.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        size = image_size + 4 if image_size == 28 else image_size  # padding 3 on the first conv for 28×28
        for i in range(depth):
            pad = 3 if (i == 0 and image_size == 28) else 1
            layers += [nn.Conv2d(channels, width, 3, padding=pad), nn.GroupNorm(width, width, affine=True),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)  # (N, width·h·w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (N, num_classes) logits


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, width: int = 128) -> nn.Module:
    """A freshly initialised network by name. Raises ValueError naming the known models."""
    if name == "convnet3":
        return ConvNet(in_channels, num_classes, image_size, width=width, depth=3)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
