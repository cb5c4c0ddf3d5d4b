"""Naive fine-tuning: train each task in turn with nothing against forgetting (the lower bound)."""

from clrun.methods.base import Method


class Naive(Method):
    measures = ("accuracy", "mse")  # its only loss is the data loss: cross-entropy or squared error
