"""A researcher's own continual-learning code, run by clrun without touching clrun (see README.md here)."""
