"""FasterVAR / StageVAR (ICML 2026): stage-aware CFG off, scale skipping and low-rank token mixing."""

from .method import FasterVAR
from .presets import RANK_RATIO_PRESETS

__all__ = ["RANK_RATIO_PRESETS", "FasterVAR"]
