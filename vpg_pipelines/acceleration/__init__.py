"""Training-free accelerators as parts of the sampler (see ``base.py`` and ``docs/acceleration.md``)."""

from .base import Acceleration, AccelerationError, AccelerationTarget, top_indices
from .fastervar import RANK_RATIO_PRESETS, FasterVAR
from .fastvar import FastVAR
from .presets import PRESETS, acceleration_names, resolve_acceleration
from .scalekv import INFINITY_2B_10, INFINITY_8B_10, RELEASED_TABLES, BudgetEntry, BudgetTable, ScaleKV

__all__ = [
    "INFINITY_2B_10", "INFINITY_8B_10", "PRESETS", "RELEASED_TABLES", "Acceleration", "AccelerationError",
    "AccelerationTarget", "BudgetEntry", "BudgetTable", "FastVAR", "FasterVAR", "RANK_RATIO_PRESETS", "ScaleKV",
    "acceleration_names",
    "resolve_acceleration", "top_indices",
]
