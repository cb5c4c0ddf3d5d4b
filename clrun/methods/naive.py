"""Naive fine-tuning: train each task in turn with nothing against forgetting (the lower bound)."""

from clrun.methods.base import Method


class Naive(Method):
    pass
