"""A small model: clrun calls it with the stream's input shape and the scenario's number of output units."""

from __future__ import annotations

import math

import torch.nn as nn

from clrun.models import Backbone


class SmallNet(Backbone):
    """Backbone (``features`` then ``head``) so that every clrun method can use it (iCaRL's features, LwF's
    warm-up, PackNet's masks)."""

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.LayerNorm(hidden),
                                      nn.ReLU())
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, n_outputs)
