"""Model classes at stable import paths (saved pipeline folders record these)."""

from .var.transformer import VARTransformer
from .var.vqvae import VARVQVAE

__all__ = ["VARTransformer", "VARVQVAE"]
