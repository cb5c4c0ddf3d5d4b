"""Backbones. Each model is ``features`` (the trunk) followed by ``head`` (one linear layer over every output
unit of the scenario); the scenario masks the head, so the models know nothing about tasks."""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.errors import ConfigError


class Backbone(nn.Module):
    features: nn.Module
    head: nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


LINEAR_INITS = ("torch", "xavier", "trunc_normal")


def init_linear_(module: nn.Module, init: str) -> None:
    """Re-initialise every Linear in ``module`` as a paper's code did; ``torch`` keeps PyTorch's default."""
    if init not in LINEAR_INITS:
        raise ConfigError(f"model.init={init!r} is not allowed; use one of {', '.join(LINEAR_INITS)}")
    if init == "torch":
        return
    for m in module.modules():
        if not isinstance(m, nn.Linear):
            continue
        if init == "xavier":  # mammoth's MNISTMLP: Xavier-uniform weights, zero biases (2-3x PyTorch's scale)
            nn.init.xavier_uniform_(m.weight)
            bias = 0.0
        else:  # trunc_normal, A-GEM's TF code: N(0, 0.1) cut at 2 std, biases 0.1 (2.4-4x PyTorch's std here)
            nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
            bias = 0.1
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)


class MLP(Backbone):
    """Fully connected ReLU network on flattened inputs (the MNIST workhorse: 784-400-400-10 etc.)."""

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, hidden: list[int] = (400, 400),
                 init: str = "torch"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, n_outputs)
        init_linear_(self, init)


class CNN(Backbone):
    """Two conv blocks and one hidden dense layer: small enough for CPU runs on MNIST/CIFAR."""

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, channels: list[int] = (32, 64), hidden: int = 256):
        super().__init__()
        c, h, w = in_shape
        blocks: list[nn.Module] = []
        for out_c in channels:
            blocks += [nn.Conv2d(c, out_c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out_c, h // 2, w // 2
        blocks += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, n_outputs)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Backbone):
    """The reduced ResNet-18 of GEM / A-GEM / DER (``nf=20`` base filters, 3x3 stem, global average pool)."""

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, nf: int = 20):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
        in_planes = nf
        for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
            for s in (stride, 1):
                layers.append(_BasicBlock(in_planes, nf * mult, s))
                in_planes = nf * mult
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, n_outputs)
