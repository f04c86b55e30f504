"""InfinityStar (text-to-video): transformer, video VAE, schedules and the sampler adapter."""

from .adapter import InfinityStarAdapter, InfinityStarState
from .schedules import get_dynamic_resolution_meta, plan_steps, video_scale_schedule
from .transformer import InfinityStarTransformer
from .video_vae import InfinityStarVideoVAE

__all__ = [
    "InfinityStarAdapter",
    "InfinityStarState",
    "InfinityStarTransformer",
    "InfinityStarVideoVAE",
    "get_dynamic_resolution_meta",
    "plan_steps",
    "video_scale_schedule",
]
