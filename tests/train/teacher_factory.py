"""Factories for the ``module:callable`` teacher spec in test_teacher.py and test_teacher_head.py."""

import torch
from torch import nn

from deit.demo.teacher import SmallConvNet


def make_teacher():
    return SmallConvNet(num_classes=4)


class RecordingColourNet(nn.Module):
    """A teacher whose body sees colours (BatchNorm, then each channel's mean) and a classifier for 4
    classes; it keeps every batch it is given (what adapting its head trained on)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(3, 4)
        self.inputs: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.inputs.append(pixel_values.detach().clone())
        return self.classifier(self.features(pixel_values))


def make_recording_teacher():
    return RecordingColourNet()


def make_not_a_module():
    return "not a module"
