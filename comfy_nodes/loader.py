"""VPG Load Model: a dropdown choice under ``models/vpg`` (or the bundled demo) -> ``VPG_MODEL``."""

from __future__ import annotations

import os

from vpg_pipelines.registry import kind_of

from . import host, sources
from .api import io
from .errors import check_widgets, title, translated
from .memory import OFFLOAD_CHOICES, QUANTIZATION_CHOICES, quantize_loaded
from .model import CATEGORY, VPG_MODEL, Placement, VPGModel


def _stamp(name: str, folders: tuple[str, ...]) -> str:
    """``name:mtime`` of a chosen file or folder (0 when there is none), so a changed file reloads."""
    if name in (sources.DEMO_CHOICE, sources.NO_COMPANION):
        return f"{name}:0"
    try:
        return f"{name}:{os.path.getmtime(host.find(name, folders))}"
    except FileNotFoundError:
        return f"{name}:0"


class VPGModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = host.filenames(host.MODELS)
        return io.Schema(
            node_id="VPGModelLoader",
            display_name="VPG Load Model",
            category=CATEGORY,
            description="Loads a next-scale model for Visual Prefix Guidance: the bundled demo, a saved pipeline "
                        "folder (pick its model_index.json) or an official checkpoint pair, from models/vpg (VAR, "
                        "Infinity, InfinityStar); text models also take a T5 folder.",
            inputs=[
                io.Combo.Input("model_name", options=sources.loader_choices(models),
                               tooltip="The bundled demo, a saved folder's model_index.json or an official checkpoint "
                                       "(var_d16.pth, infinity_2b_reg.pth, the infinitystar_8b_720p_weights folder "
                                       "...) in models/vpg."),
                # not "vae_name": ComfyUI's frontend (1.27) routes inputs of that name through its model-asset
                # code, which fails on servers missing some core loader nodes
                io.Combo.Input("vae_file", options=sources.companion_choices(models), default=sources.NO_COMPANION,
                               tooltip="For an official checkpoint: its VAE file (vae_ch160v4096z32.pth for VAR, "
                                       "infinity_vae_d32reg.pth for Infinity 2B, infinitystar_videovae.pth). none "
                                       "for the bundled demo and saved folders, which bring their own."),
                io.Combo.Input("text_encoder", default=sources.NO_COMPANION,
                               options=sources.text_encoder_choices(host.filenames(host.TEXT_ENCODERS) + models),
                               tooltip="Infinity / InfinityStar official files: the flan-T5-XL folder (models/"
                                       "text_encoders/flan-t5-xl). none for VAR and saved folders that bring one."),
                io.Combo.Input("dtype", options=list(sources.DTYPES), default="fp32",
                               tooltip="Weight precision; fp32 is exact, bf16/fp16 halve memory on GPUs."),
                io.Combo.Input("quantization", options=list(QUANTIZATION_CHOICES), default="auto",
                               tooltip="Transformer weights: int8 (TorchAO), nf4 (bitsandbytes: NVIDIA, AMD, Intel "
                                       "GPUs), fp8 (stored fp8, computed bf16; not on Mac or Intel GPUs), none. auto: "
                                       "none unless the free VRAM needs it (planned for the model's default call)."),
                io.Combo.Input("offload", options=list(OFFLOAD_CHOICES), default="auto",
                               tooltip="none: all on the GPU; model: the text encoder leaves before sampling; group: "
                                       "transformer blocks streamed in; sequential: layer by layer (slowest). auto: "
                                       "the sampler plans each run and picks the least costly mode that fits."),
                io.Combo.Input("variant", options=sources.variant_choices(), default=sources.AUTO_VARIANT,
                               tooltip="Official InfinityStar checkpoints: the official script to run it like (720p: "
                                       "5 s at 720p; 480p: 5 or 10 s at 480p and video continuation; interact). "
                                       "auto: from the file name (..._480p_... -> 480p). Other models: auto."),
            ],
            outputs=[VPG_MODEL.Output(display_name="model")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, vae_file: str, text_encoder: str, dtype: str, quantization: str,
                           offload: str, variant: str = sources.AUTO_VARIANT) -> str:
        """Reload when a chosen file changes on disk (same name, new contents)."""
        stamps = [_stamp(model_name, (host.MODELS,)), _stamp(vae_file, (host.MODELS,)),
                  _stamp(text_encoder, (host.TEXT_ENCODERS, host.MODELS))]
        return "|".join([*stamps, dtype, quantization, offload, variant])

    @classmethod
    def execute(cls, model_name: str, vae_file: str, text_encoder: str, dtype: str, quantization: str,
                offload: str, variant: str = sources.AUTO_VARIANT) -> io.NodeOutput:
        check_widgets(cls, dtype=dtype, quantization=quantization, offload=offload, variant=variant)
        with translated(title(cls)):
            pipe = sources.load_choice(
                model_name, vae_file, lambda name: host.find(name, (host.MODELS,)), dtype, text_encoder,
                lambda name: host.find(name, (host.TEXT_ENCODERS, host.MODELS)), variant)
            applied = quantize_loaded(pipe, quantization, host.free_bytes(), host.torch_device())
        placement = Placement(handle=host.management_handle(pipe.weight_modules))
        return io.NodeOutput(VPGModel(pipe, kind_of(pipe), model_name, offload=offload, quantization=applied,
                                      placement=placement))
