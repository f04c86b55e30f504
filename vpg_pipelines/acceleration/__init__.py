"""Training-free accelerators as parts of the sampler (see ``base.py`` and ``docs/acceleration.md``)."""

from .base import Acceleration, AccelerationError, AccelerationTarget, top_indices
from .fastervar import RANK_RATIO_PRESETS, FasterVAR
from .fastvar import FastVAR
from .presets import (
    METHODS,
    PRESETS,
    acceleration_from_config,
    acceleration_names,
    presets_for,
    resolve_acceleration,
)
from .scalekv import (
    INFINITY_2B_10,
    INFINITY_8B_10,
    RELEASED_TABLES,
    BudgetEntry,
    BudgetTable,
    ScaleKV,
    budget_table,
)

__all__ = [
    "INFINITY_2B_10", "INFINITY_8B_10", "METHODS", "PRESETS", "RELEASED_TABLES", "Acceleration", "AccelerationError",
    "AccelerationTarget", "BudgetEntry", "BudgetTable", "FastVAR", "FasterVAR", "RANK_RATIO_PRESETS", "ScaleKV",
    "acceleration_from_config",
    "acceleration_names", "budget_table", "presets_for", "resolve_acceleration", "top_indices",
]
