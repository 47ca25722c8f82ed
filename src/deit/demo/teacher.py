"""The built-in demo's teacher: a small convnet for 28-56 px digits."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallConvNet(nn.Module):
    """A small convnet (five conv-BN-ReLU blocks, two of them stride 2, global average pooling,
    a linear classifier): about 0.3 M parameters, made for 28-56 px digits. The demo's teacher."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 32, 1),
            _conv_bn_relu(32, 64, 2),
            _conv_bn_relu(64, 64, 1),
            _conv_bn_relu(64, 128, 2),
            _conv_bn_relu(128, 128, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values))
