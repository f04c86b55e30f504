"""Visual Prefix Guidance for next-scale autoregressive image and video models."""

__version__ = "0.1.0"
