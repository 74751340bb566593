"""Convolutional backbones for image data: torchvision ResNets without their classifier, a small CNN,
and projection heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BACKBONES", "HEADS", "STEMS", "SmallCNN", "make_backbone", "make_head"]

#: backbones :func:`make_backbone` builds
BACKBONES = ("resnet18", "resnet34", "resnet50", "small_cnn")
#: ResNet stems :func:`make_backbone` builds
STEMS = ("auto", "cifar", "imagenet")
#: projection heads :func:`make_head` builds
HEADS = ("linear", "mlp", "identity")


class SmallCNN(nn.Module):
    """A three-layer convolutional backbone for fast tests: 32-64-128 channels, global average pooling."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_backbone(name: str, image_shape: Sequence[int], stem: str = "auto") -> tuple[nn.Module, int]:
    """``g``: a torchvision ResNet without its classifier, or :class:`SmallCNN`; returns it and ``N``.

    ``stem`` (ResNets only): ``"cifar"`` makes the stem a 3 × 3 convolution with stride 1 and no
    max-pool (the usual CIFAR variant); ``"imagenet"`` keeps torchvision's 7 × 7 stride-2 convolution
    and 3 × 3 stride-2 max-pool (as the official CoHiClust code does, also on MNIST); ``"auto"`` is
    ``"cifar"`` for inputs of at most 32 × 32 pixels and ``"imagenet"`` otherwise. Grayscale images
    get a one-channel first convolution either way.
    """
    channels, height, width = image_shape
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    if name == "small_cnn":
        net = SmallCNN(channels)
        return net, net.out_features
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if stem == "cifar" or (stem == "auto" and min(height, width) <= 32):
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    out_features = net.fc.in_features
    net.fc = nn.Identity()
    return net, out_features


def make_head(kind: str, in_features: int, out_features: int, hidden: int) -> nn.Module:
    """``"linear"``: one layer; ``"mlp"``: ``in → hidden → out`` with a ReLU; ``"identity"``: nothing."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
