"""Model classes at stable import paths (saved pipeline folders record these)."""

from .infinity_star.transformer import InfinityStarTransformer
from .infinity_star.video_vae import InfinityStarVideoVAE
from .var.transformer import VARTransformer
from .var.vqvae import VARVQVAE

__all__ = ["InfinityStarTransformer", "InfinityStarVideoVAE", "VARTransformer", "VARVQVAE"]
