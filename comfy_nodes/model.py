"""What flows through the ``VPG_MODEL`` socket: a loaded pipeline and the guidance chain patched onto it.

Like ComfyUI's ``MODEL`` (a ``ModelPatcher``), a guidance node never changes its input: it returns a
clone with one more term, sharing the pipeline's weights, so ComfyUI's cached outputs upstream stay valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from vpg_pipelines.acceleration import Acceleration
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.pipelines.pipeline_vpg_infinity_star_interact import CONTEXT_FRAMES
from vpg_pipelines.registry import ModelKind, kind_of

from .api import io
from .errors import fail

VPG_MODEL = io.Custom("VPG_MODEL")
VPG_COND = io.Custom("VPG_COND")
VPG_GUIDANCE = io.Custom("VPG_GUIDANCE")
VPG_STORY = io.Custom("VPG_STORY")
INTERACT = "interact"
"""The InfinityStar variant of the released Interact checkpoint (``registry``: its own pipeline class)."""
CATEGORY = "sampling/vpg"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass
class Placement:
    """How the weights of one loaded pipeline are placed; shared by every clone of the model.

    Attributes:
        handle: ComfyUI's ``ModelPatcher`` over the pipeline's modules (``None`` outside ComfyUI).
        offload: the offload mode applied on the first run (``None`` until then; kept afterwards,
            because leaving accelerate's sequential offload cannot restore the weights).
    """

    handle: Any = None
    offload: str | None = None


@dataclass(frozen=True)
class Story:
    """What flows through the ``VPG_STORY`` socket: where a VPG Interact Sampler's stories ended, to continue them.

    Attributes:
        context_latents: the pipeline's ``context_latents`` ``(stories, 64, 22, h, w)`` on the CPU.
        source: the loader's choice that made them (a story continues with the same model).
    """

    context_latents: torch.Tensor
    source: str

    @property
    def stories(self) -> int:
        return int(self.context_latents.shape[0])


@dataclass(frozen=True)
class VPGModel:
    """A pipeline plus its guidance chain.

    Attributes:
        pipeline: the loaded pipeline (``VPGVARPipeline`` or another kind's).
        kind: its :class:`~vpg_pipelines.registry.ModelKind` (conditioning, media, guidance kinds).
        source: what was loaded (the loader's choice), shown in messages.
        cfg: classifier-free (or, for InfinityStar, adaptive projected) guidance, or ``None`` (off).
        prefix: Visual Prefix Guidance, or ``None`` (off).
        guiders: the other guidance terms (IGG, SSG, entropy temperature) in graph order; the pipeline's
            chain orders them by stage.
        offload: the loader's offload choice (``"auto"`` or a mode; see ``memory.py``).
        quantization: the transformer's weight format the loader applied.
        placement: where the weights are (shared by the clones).
        acceleration: the accelerator of a VPG Accelerate node (the pipeline's ``acceleration=``), or ``None``.
    """

    pipeline: Any
    kind: ModelKind
    source: str
    cfg: ClassifierFreeGuidance | AdaptiveProjectedGuidance | None = None
    prefix: PrefixGuidance | None = None
    guiders: tuple = ()
    offload: str = "auto"
    quantization: str = "none"
    placement: Placement = dataclasses.field(default_factory=Placement)
    acceleration: Acceleration | None = None

    def clone(self, **changes: Any) -> VPGModel:
        return dataclasses.replace(self, **changes)

    def cfg_strength(self, off: float) -> float:
        """The CFG / APG strength (the pipeline's ``guidance_scale``), ``off`` without a CFG or APG node."""
        return self.cfg.guidance_scale if self.cfg is not None else off

    def prefix_kwargs(self) -> dict[str, Any]:
        """The pipeline's ``vpg_*`` arguments of the Prefix Guidance node (off without one)."""
        prefix = self.prefix or PrefixGuidance(1.0)
        return dict(vpg_scale=prefix.guidance_scale, vpg_corruption=prefix.corruption, vpg_mode=prefix.mode,
                    vpg_refresh=prefix.refresh, vpg_scales=prefix.scales)

    def describe(self) -> str:
        name = "apg" if isinstance(self.cfg, AdaptiveProjectedGuidance) else "cfg"
        cfg = f"{name} {self.cfg.guidance_scale:g}" if self.cfg else "no CFG"
        vpg = f"VPG w={self.prefix.guidance_scale:g} p={self.prefix.corruption:g}" if self.prefix else "no VPG"
        others = "".join(f", {g.describe()}" for g in self.guiders)
        accel = f", {self.acceleration.name}" if self.acceleration is not None else ""
        return f"{self.source} ({cfg}, {vpg}{others}{accel})"


def is_interact(pipeline: Any) -> bool:
    """Whether ``pipeline`` is InfinityStar-Interact (one clip per prompt from a reference video)."""
    kind = kind_of(pipeline)
    return INTERACT in kind.variants and isinstance(pipeline, kind.pipeline_class_for(INTERACT))


def default_call(pipeline: Any) -> dict[str, Any]:
    """The call a loader plans with and the Prefix Guidance node checks scale indices against: one sample of
    the model's first class or a short prompt, every other argument at the model's default. InfinityStar-Interact
    always continues something: one clip from a story's context at the model's default size (on the meta device,
    as ``vpg memory`` plans it: only its shape is read)."""
    if kind_of(pipeline).conditioning == "class":
        return {"class_labels": [0]}
    call: dict[str, Any] = {"prompt": "a photo of a fox in the snow"}
    if is_interact(pipeline):
        height, width = pipeline.default_size
        call["context_latents"] = torch.empty(1, pipeline.vae.codebook_dim, CONTEXT_FRAMES, height // 16,
                                              width // 16, device="meta")
    return call


def model_input() -> Any:
    return VPG_MODEL.Input("model", tooltip="A VPG model (from VPG Load Model or a VPG guidance node).")


def vpg_model(node_title: str, value: Any) -> VPGModel:
    """``value`` as a :class:`VPGModel`, or the node's error saying where one comes from."""
    if not isinstance(value, VPGModel):
        raise fail(node_title, "`model` must come from a VPG Load Model node (or a VPG guidance node), "
                               f"got {type(value).__name__}")
    return value
