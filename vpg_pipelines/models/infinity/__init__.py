"""Infinity (text-to-image, bitwise next-scale prediction): transformer, BSQ VAE, schedules, adapter."""

from .adapter import InfinityAdapter, InfinityState
from .bsq_vae import InfinityBSQVAE
from .schedules import InfinitySchedule, schedule_for_size, schedule_from_template
from .transformer import InfinityCondition, InfinityTransformer

__all__ = [
    "InfinityAdapter",
    "InfinityBSQVAE",
    "InfinityCondition",
    "InfinitySchedule",
    "InfinityState",
    "InfinityTransformer",
    "schedule_for_size",
    "schedule_from_template",
]
