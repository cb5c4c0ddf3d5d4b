"""Backbones. Each model is ``features`` (the trunk) followed by ``head`` (one linear layer over every output
unit of the scenario); the scenario masks the head, so the models know nothing about tasks."""

from __future__ import annotations

import math

import torch
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


class VAE(nn.Module):
    """A fully connected variational autoencoder (DGR's generator): encoder in -> hidden -> (mu, log var) of a
    ``z_dim`` Gaussian, decoder the encoder mirrored. ``likelihood=bernoulli``: a sigmoid output and a binary
    cross-entropy (pixels in [0, 1]); ``gaussian``: a linear output and a squared error (any inputs)."""

    def __init__(self, in_shape: tuple[int, ...], hidden: list[int] = (400, 400), z_dim: int = 100,
                 likelihood: str = "bernoulli"):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"likelihood={likelihood!r} is not allowed; use bernoulli or gaussian")
        self.in_shape, self.z_dim, self.likelihood = tuple(in_shape), int(z_dim), likelihood
        width = math.prod(in_shape)
        enc: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.to_mean, self.to_logvar = nn.Linear(width, z_dim), nn.Linear(width, z_dim)
        dec: list[nn.Module] = []
        width = z_dim
        for h in reversed(list(hidden)):
            dec += [nn.Linear(width, h), nn.ReLU()]
            width = h
        dec.append(nn.Linear(width, math.prod(in_shape)))
        self.decoder = nn.Sequential(*dec)

    def decode(self, z: Tensor) -> Tensor:
        out = self.decoder(z)
        out = torch.sigmoid(out) if self.likelihood == "bernoulli" else out
        return out.view(len(z), *self.in_shape)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` inputs decoded from z ~ N(0, I), drawn with ``generator`` (so they shift no other draw)."""
        z = torch.randn(n, self.z_dim, generator=generator).to(self.to_mean.weight.device)
        return self.decode(z)

    def loss(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The negative ELBO per input element, averaged over the batch: the reconstruction error averaged over
        the elements plus KL(q(z|x) || N(0, I)) divided by their number (van de Ven & Tolias's ``average``)."""
        h = self.encoder(x)
        mean, logvar = self.to_mean(h), self.to_logvar(h)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        recon = self.decode(mean + eps * torch.exp(0.5 * logvar)).flatten(1)
        target = x.flatten(1)
        if self.likelihood == "bernoulli":
            rec = F.binary_cross_entropy(recon, target, reduction="none").mean(1)
        else:
            rec = ((recon - target) ** 2).mean(1)
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1) / target.shape[1]
        return (rec + kl).mean()
