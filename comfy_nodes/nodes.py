"""The ComfyUI nodes (schema API). Needs ComfyUI on the path; all logic lives in the plain modules.

Schemas are built from :data:`specs.NODE_SPECS`; ``execute`` calls ``core`` and adds what only
ComfyUI provides: model folders, devices and model management, the progress bar with previews,
and interruption.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, InputImpl, Types, io
from typing_extensions import override

from vpg_pipelines.memory.offload import apply_offload

from . import core, guidance_map, guiders, memory, registry, text_sampling
from .specs import COMPANION_CHOICES, MODEL_CHOICES, NODE_SPECS, TEXT_ENCODER_CHOICES, InputSpec, NodeSpec

FOLDER = "vpg"
TEXT_ENCODERS = "text_encoders"  # ComfyUI's own folder for text encoders
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))

VPGModelType = io.Custom("VPG_MODEL")
VPGCondType = io.Custom("VPG_COND")
VPGGuidanceType = io.Custom("VPG_GUIDANCE")
_SOCKETS = {"VPG_MODEL": VPGModelType, "VPG_COND": VPGCondType, "VPG_GUIDANCE": VPGGuidanceType, "IMAGE": io.Image,
            "VIDEO": io.Video}
PREVIEW_MAX_SIZE = 512
MAX_PREVIEWS = 16
"""At most about this many preview decodes per run (a video run has ~60 steps, each decode a VAE call)."""


def dynamic_options(name: str) -> list[str]:
    """The current choices of a dynamic combo (re-read whenever ComfyUI asks for the schema)."""
    files = folder_paths.get_filename_list(FOLDER)
    if name == MODEL_CHOICES:
        return registry.loader_choices(files)
    if name == COMPANION_CHOICES:
        return registry.companion_choices(files)
    if name == TEXT_ENCODER_CHOICES:
        return registry.text_encoder_choices(_text_encoder_files() + files)
    raise KeyError(name)


def _text_encoder_files() -> list[str]:
    try:
        return folder_paths.get_filename_list(TEXT_ENCODERS)
    except KeyError:  # a ComfyUI without that folder name
        return []


def _find(name: str, folders: tuple[str, ...]) -> Path:
    """A listed file *or folder* (shard folders, T5 folders) under the named model folders."""
    for folder in folders:
        try:
            bases = folder_paths.get_folder_paths(folder)
        except KeyError:
            continue
        for base in bases:
            candidate = Path(base) / name
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"{name!r} is in none of the folders {list(folders)}")


def _input(spec: InputSpec):
    common = {"optional": spec.optional, "tooltip": spec.tooltip or None}
    if spec.type == "INT":
        return io.Int.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step,
                            control_after_generate=spec.control_after_generate or None, **common)
    if spec.type == "FLOAT":
        return io.Float.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step,
                              round=spec.step, **common)
    if spec.type == "STRING":
        return io.String.Input(spec.name, default=spec.default, multiline=spec.multiline, **common)
    if spec.type == "BOOLEAN":
        return io.Boolean.Input(spec.name, default=spec.default, **common)
    if spec.type == "COMBO":
        options = dynamic_options(spec.options) if isinstance(spec.options, str) else list(spec.options)
        return io.Combo.Input(spec.name, options=options, default=spec.default, **common)
    return _SOCKETS[spec.type].Input(spec.name, **common)


def build_schema(spec: NodeSpec) -> io.Schema:
    """The ComfyUI schema of one node spec."""
    return io.Schema(
        node_id=spec.node_id,
        display_name=spec.display_name,
        category=spec.category,
        description=spec.description,
        inputs=[_input(i) for i in spec.inputs],
        outputs=[_SOCKETS[o.type].Output(display_name=o.name, tooltip=o.tooltip or None) for o in spec.outputs],
        is_output_node=spec.is_output_node,
    )


@contextlib.contextmanager
def readable_errors() -> Iterator[None]:
    """Re-raise the pack's own errors as plain ``ValueError``: ComfyUI shows the exception's type name
    next to the message, and ours would read as a file path (the pack is imported by its folder path)."""
    try:
        yield
    except (core.VPGNodeError, registry.VPGLoadError) as err:
        raise ValueError(str(err)) from None


def _management_handle(pipe, kind: registry.PipelineKind):
    """A ModelPatcher over the pipeline's modules, so ComfyUI loads, offloads and frees them like its own.

    The modules are wrapped in a fresh ``ModuleDict`` (the patcher writes bookkeeping attributes
    such as ``device`` onto the module it manages, which diffusers models define as properties).
    """
    container = torch.nn.ModuleDict(kind.modules(pipe))
    return comfy.model_patcher.ModelPatcher(
        container,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
        size=comfy.model_management.module_size(container),
    )


class VPGModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGModelLoader"])

    @classmethod
    def fingerprint_inputs(cls, model_name: str, vae_file: str, text_encoder: str, dtype: str, quantization: str,
                           offload: str) -> str:
        """Reload when a chosen file changes on disk (same name, new contents)."""
        stamps = []
        for name, folders in ((model_name, (FOLDER,)), (vae_file, (FOLDER,)), (text_encoder, (TEXT_ENCODERS, FOLDER))):
            try:
                path = _find(name, folders) if name not in (registry.DEMO_CHOICE, "none") else None
            except FileNotFoundError:
                path = None
            stamps.append(f"{name}:{os.path.getmtime(path) if path is not None else 0}")
        return "|".join([*stamps, dtype, quantization, offload])

    @classmethod
    def execute(cls, model_name: str, vae_file: str, text_encoder: str, dtype: str, quantization: str,
                offload: str) -> io.NodeOutput:
        try:
            pipe, kind = registry.load_pipeline(
                model_name, vae_file, lambda name: _find(name, (FOLDER,)), dtype, text_encoder,
                lambda name: _find(name, (TEXT_ENCODERS, FOLDER)))
        except registry.VPGLoadError as err:
            raise ValueError(f"VPG Load Model: {err}") from None
        if offload not in memory.OFFLOAD_CHOICES:
            raise ValueError(f"VPG Load Model: `offload` must be one of {memory.OFFLOAD_CHOICES}, got {offload!r}")
        with readable_errors():
            applied = memory.quantize_loaded(pipe, quantization, _free_bytes(), _on_cuda())
        model = core.VPGModel(pipe, kind, model_name, handle=_management_handle(pipe, kind), offload=offload,
                              quantization=applied)
        return io.NodeOutput(model)


class VPGClassConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGClassConditioning"])

    @classmethod
    def execute(cls, model: core.VPGModel, classes: str) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(core.encode_classes(model, classes))


class VPGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGTextEncode"])

    @classmethod
    def execute(cls, model: core.VPGModel, prompt: str, negative_prompt: str) -> io.NodeOutput:
        _load_for_text(model)
        with readable_errors():
            return io.NodeOutput(text_sampling.encode_text(model, prompt, negative_prompt))


class VPGCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGCFG"])

    @classmethod
    def execute(cls, model: core.VPGModel, cfg: float) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(core.apply_cfg(model, cfg))


class VPGAPG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGAPG"])

    @classmethod
    def execute(cls, model: core.VPGModel, cfg: float, norm_threshold: float) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(core.apply_apg(model, cfg, norm_threshold))


class VPGPrefixGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGPrefixGuidance"])

    @classmethod
    def execute(cls, model: core.VPGModel, vpg_scale: float, corruption: float, mode: str, refresh: str,
                scales: str) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(core.apply_prefix_guidance(model, vpg_scale, corruption, mode, refresh, scales))


class VPGIGG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGIGG"])

    @classmethod
    def execute(cls, model: core.VPGModel, igg_scale: float, schedule: str, start: float,
                stop: float) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(guiders.apply_igg(model, igg_scale, schedule, start, stop))


class VPGSSG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGSSG"])

    @classmethod
    def execute(cls, model: core.VPGModel, ssg_scale: float, interpolation: str, start: float,
                stop: float) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(guiders.apply_ssg(model, ssg_scale, interpolation, start, stop))


class VPGEntropyTemperature(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGEntropyTemperature"])

    @classmethod
    def execute(cls, model: core.VPGModel, t0: float, alpha: float, theta: float, base: float, start: float,
                stop: float) -> io.NodeOutput:
        with readable_errors():
            return io.NodeOutput(guiders.apply_entropy_temperature(model, t0, alpha, theta, base, start, stop))


def _load(model: object, memory_required: int = 0) -> None:
    """Let ComfyUI's model management place the weights (GPU when there is one, freeing others first)."""
    if isinstance(model, core.VPGModel) and model.handle is not None:
        comfy.model_management.load_models_gpu([model.handle], memory_required=memory_required,
                                               force_full_load=True)


def _on_cuda() -> bool:
    return comfy.model_management.get_torch_device().type == "cuda"


def _free_bytes() -> int | None:
    """ComfyUI's free VRAM (``None`` off CUDA: nothing is planned there)."""
    if not _on_cuda():
        return None
    return int(comfy.model_management.get_free_memory(comfy.model_management.get_torch_device()))


def _load_for_text(model: object) -> None:
    """Place the weights for Text Encode: all on the GPU when the model runs without offloading (planned
    with its default call when ``offload`` is auto); otherwise the offload hooks move the text encoder."""
    if not isinstance(model, core.VPGModel) or model.handle is None:
        return
    pipe = model.pipeline
    applied = getattr(pipe, "_vpg_offload", None)
    if applied is not None or not _on_cuda():
        if applied in (None, "none"):
            _load(model)
        return
    offload = model.offload
    if offload == "auto":
        estimate = pipe.estimate_memory(**memory.default_call(pipe))
        device = comfy.model_management.get_torch_device()
        comfy.model_management.free_memory(estimate.peak("none"), device)
        fits = estimate.peak("none") <= memory.usable(_free_bytes() or 0)
        offload = "none" if fits else "model"
    if offload == "none":
        _load(model)
    else:
        apply_offload(pipe, offload, comfy.model_management.get_torch_device())
        pipe._vpg_offload = offload


def _prepare(model: object, node: str):
    """The samplers' ``prepare``: plan the call's GPU memory, report it, refuse a run that cannot fit,
    let ComfyUI unload other models for it, then place the weights (the offload mode on the first run)."""

    def prepare(call: dict) -> None:
        if not isinstance(model, core.VPGModel) or model.handle is None:
            return
        if not _on_cuda():
            _load(model)
            return
        pipe = model.pipeline
        device = comfy.model_management.get_torch_device()
        wanted = pipe.estimate_memory(**call).peak("none")
        comfy.model_management.free_memory(wanted, device)  # ComfyUI unloads other models first
        free = _free_bytes() or 0
        if getattr(pipe, "_vpg_offload", None) == "none":  # our weights are on the GPU already
            free += int(model.handle.loaded_size()) if hasattr(model.handle, "loaded_size") else 0
        plan = memory.plan_run(model, call, free, node)
        logging.info("%s: %s", node, plan.describe())
        if plan.offload == "none":
            weights = sum(plan.estimate.weights.values())
            _load(model, memory_required=max(0, plan.peak - weights))
        elif getattr(pipe, "_vpg_offload", None) is None:
            apply_offload(pipe, plan.offload, device)
        pipe._vpg_offload = plan.offload

    return prepare


def _progress(model: object):
    """A ProgressBar and the per-scale callback that ticks it with a preview (decoded only when watched)."""
    pbar = comfy.utils.ProgressBar(max(1, model.num_scales) if isinstance(model, core.VPGModel) else 1)

    def on_scale(progress: core.ScaleProgress) -> None:
        preview = None
        every = -(-progress.total // MAX_PREVIEWS)
        wanted = progress.index % every == 0 or progress.index == progress.total - 1
        if pbar.hook is not None and wanted:  # a preview costs a VAE call: only when someone watches
            pixels = (progress.preview().clamp(0, 1) * 255).to(torch.uint8).numpy()
            from PIL import Image

            preview = ("JPEG", Image.fromarray(pixels), PREVIEW_MAX_SIZE)
        pbar.update_absolute(progress.index + 1, progress.total, preview)

    return on_scale


class VPGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGSampler"])

    @classmethod
    def execute(cls, model: core.VPGModel, conditioning: core.VPGConditioning, seed: int, batch_size: int,
                top_k: int, top_p: float) -> io.NodeOutput:
        with readable_errors():
            result = core.sample(
                model, conditioning, seed, batch_size, top_k, top_p,
                on_scale=_progress(model),
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                prepare=_prepare(model, "VPG Sampler"),
            )
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput(result.images.to(device), result.guidance)


class VPGTextImageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGTextImageSampler"])

    @classmethod
    def execute(cls, model: core.VPGModel, conditioning: text_sampling.VPGTextConditioning, seed: int, size: str,
                batch_size: int, tau: float, cfg_insertion_layer: int, top_k: int, top_p: float) -> io.NodeOutput:
        with readable_errors():
            result = text_sampling.sample_text_image(
                model, conditioning, seed, size, batch_size, tau, cfg_insertion_layer, top_k, top_p,
                on_scale=_progress(model),
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                prepare=_prepare(model, "VPG Text-to-Image Sampler"),
            )
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput(result.images.to(device), result.guidance)


class VPGVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGVideoSampler"])

    @classmethod
    def execute(cls, model: core.VPGModel, conditioning: text_sampling.VPGTextConditioning, seed: int,
                num_frames: int, size: str, batch_size: int, tau_image: float, tau_video: float,
                start_image: torch.Tensor | None = None) -> io.NodeOutput:
        with readable_errors():
            result = text_sampling.sample_video(
                model, conditioning, seed, num_frames, size, batch_size, tau_image, tau_video, start_image,
                on_scale=_progress(model),
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                prepare=_prepare(model, "VPG Video Sampler"),
            )
        frames = result.frames.to(comfy.model_management.intermediate_device())
        video = InputImpl.VideoFromComponents(
            Types.VideoComponents(images=frames, audio=None, frame_rate=Fraction(result.fps)))
        return io.NodeOutput(frames, video)


class VPGGuidanceMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return build_schema(NODE_SPECS["VPGGuidanceMap"])

    @classmethod
    def execute(cls, guidance: guidance_map.GuidanceMaps, normalize: str, cell: int) -> io.NodeOutput:
        if not isinstance(guidance, guidance_map.GuidanceMaps):
            raise ValueError(
                f"VPG Guidance Map: `guidance` must come from a VPG Sampler, got {type(guidance).__name__}"
            )
        return io.NodeOutput(guidance_map.render(guidance, normalize, cell))


NODES: list[type[io.ComfyNode]] = [
    VPGModelLoader, VPGClassConditioning, VPGTextEncode, VPGCFG, VPGAPG, VPGPrefixGuidance, VPGIGG, VPGSSG,
    VPGEntropyTemperature, VPGSampler, VPGTextImageSampler, VPGVideoSampler, VPGGuidanceMap,
]


class VPGExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> VPGExtension:
    return VPGExtension()
