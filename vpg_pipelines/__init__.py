"""Visual Prefix Guidance for next-scale autoregressive image and video models."""

from .guidance.apg import AdaptiveProjectedGuidance
from .guidance.base import GuidanceTerm
from .guidance.cfg import ClassifierFreeGuidance
from .guidance.chain import GuidanceChain
from .guidance.igg import InformationGroundingGuidance
from .guidance.prefix import PrefixGuidance
from .guidance.ssg import ScaledSpatialGuidance
from .guidance.temperature import EntropyAwareTemperature
from .loading.auto import load_demo_pipeline
from .loading.infinity import load_official_infinity
from .loading.var import load_official_var
from .models.var.transformer import VARTransformer
from .models.var.vqvae import VARVQVAE
from .pipelines.pipeline_vpg_infinity import VPGInfinityPipeline
from .pipelines.pipeline_vpg_infinity_star import InfinityStarPipelineOutput, VPGInfinityStarPipeline
from .pipelines.pipeline_vpg_infinity_star_interact import (
    InfinityStarInteractPipelineOutput,
    VPGInfinityStarInteractPipeline,
)
from .pipelines.pipeline_vpg_var import VPGVARPipeline
from .utils import export_to_video

__version__ = "0.1.0"

__all__ = [
    "AdaptiveProjectedGuidance",
    "ClassifierFreeGuidance",
    "EntropyAwareTemperature",
    "GuidanceChain",
    "GuidanceTerm",
    "InfinityStarInteractPipelineOutput",
    "InfinityStarPipelineOutput",
    "InformationGroundingGuidance",
    "PrefixGuidance",
    "ScaledSpatialGuidance",
    "VARTransformer",
    "VARVQVAE",
    "VPGInfinityPipeline",
    "VPGInfinityStarInteractPipeline",
    "VPGInfinityStarPipeline",
    "VPGVARPipeline",
    "export_to_video",
    "load_official_infinity",
    "load_official_var",
    "load_demo_pipeline",
]
