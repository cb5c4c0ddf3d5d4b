"""clrun: a continual-learning experiment runner."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${default:${lam},100}`: a method's own default when the top-level number is null
if not OmegaConf.has_resolver("default"):
    OmegaConf.register_new_resolver("default", lambda value, fallback: fallback if value is None else value)
