"""The pack's entry point for ComfyUI: the node list (``comfy_entrypoint``, imported by the root ``__init__.py``)."""

from __future__ import annotations

from typing_extensions import override

from .accelerate import VPGAccelerate
from .api import ComfyExtension, io
from .conditioning import VPGClassConditioning, VPGTextEncode
from .guidance import VPGAPG, VPGCFG, VPGIGG, VPGSSG, VPGEntropyTemperature, VPGGuidanceMap, VPGPrefixGuidance
from .interact import VPGInteractSampler
from .loader import VPGModelLoader
from .samplers import VPGSampler, VPGTextImageSampler, VPGVideoSampler

NODES: list[type[io.ComfyNode]] = [
    VPGModelLoader, VPGClassConditioning, VPGTextEncode, VPGCFG, VPGAPG, VPGPrefixGuidance, VPGIGG, VPGSSG,
    VPGEntropyTemperature, VPGAccelerate, VPGSampler, VPGTextImageSampler, VPGVideoSampler, VPGInteractSampler,
    VPGGuidanceMap,
]


class VPGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> VPGExtension:
    return VPGExtension()
