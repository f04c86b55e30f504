"""The node pack's interface, declared once as plain data.

``nodes.py`` builds every ComfyUI schema (``io.Schema``) from this table, and the workflow tests
check the shipped workflows against the same table without importing ComfyUI. A test that runs when
ComfyUI is available checks that the schemas ComfyUI derives agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpg_pipelines.guidance.igg import SCHEDULES as IGG_SCHEDULES
from vpg_pipelines.guidance.prefix import MODES, REFRESH
from vpg_pipelines.guidance.ssg import INTERPOLATIONS
from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS as PAPER

from .guidance_map import NORMALIZE
from .memory import OFFLOAD_CHOICES, QUANTIZATION_CHOICES
from .registry import DTYPES
from .text_sampling import DEFAULT_SIZE, infinity_sizes, infinity_star_sizes

CATEGORY = "sampling/vpg"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
MODEL_CHOICES = "vpg_models"
"""Dynamic combo: the loader's model choices (bundled demo + files under ``models/vpg``)."""
COMPANION_CHOICES = "vpg_companions"
"""Dynamic combo: ``"none"`` + checkpoint files under ``models/vpg``."""
TEXT_ENCODER_CHOICES = "vpg_text_encoders"
"""Dynamic combo: ``"none"`` + transformers T5 folders under ``models/text_encoders`` and ``models/vpg``."""
DYNAMIC_CHOICES = (MODEL_CHOICES, COMPANION_CHOICES, TEXT_ENCODER_CHOICES)


@dataclass(frozen=True)
class InputSpec:
    """One node input. ``type`` is a widget type (``WIDGET_TYPES``) or a socket type string.

    ``options`` is a tuple of choices, or the name of a dynamic choice list (``MODEL_CHOICES``...).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] | str | None = None
    multiline: bool = False
    control_after_generate: bool = False
    optional: bool = False
    tooltip: str = ""

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str
    tooltip: str = ""


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    is_output_node: bool = False
    category: str = CATEGORY
    extra: dict = field(default_factory=dict, compare=False)


MODEL = "VPG_MODEL"
COND = "VPG_COND"
GUIDANCE = "VPG_GUIDANCE"
IMAGE = "IMAGE"
VIDEO = "VIDEO"

_model_in = InputSpec("model", MODEL, tooltip="A VPG model (from VPG Load Model or a VPG guidance node).")


def _range_inputs() -> tuple[InputSpec, InputSpec]:
    """diffusers guiders' ``start`` / ``stop``: the fractions of the sampling steps the term acts in."""
    return (InputSpec("start", "FLOAT", default=0.0, min=0.0, max=0.99, step=0.01,
                      tooltip="Fraction of the steps before which the term does nothing (step i of N acts from "
                              "int(start*N))."),
            InputSpec("stop", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01,
                      tooltip="Fraction of the steps from which the term does nothing (acts before int(stop*N))."))

NODE_SPECS: dict[str, NodeSpec] = {
    spec.node_id: spec
    for spec in (
        NodeSpec(
            "VPGModelLoader",
            "VPG Load Model",
            "Loads a next-scale model for Visual Prefix Guidance: the bundled demo, a saved pipeline folder "
            "(pick its model_index.json) or an official checkpoint pair, from models/vpg (VAR, Infinity, "
            "InfinityStar); text models also take a T5 folder.",
            (
                InputSpec("model_name", "COMBO", options=MODEL_CHOICES,
                          tooltip="The bundled demo, a saved folder's model_index.json or an official checkpoint "
                                  "(var_d16.pth, infinity_2b_reg.pth, the infinitystar_8b_720p_weights folder ...) "
                                  "in models/vpg."),
                # not "vae_name": ComfyUI's frontend (1.27) routes inputs of that name through its
                # model-asset code, which fails on servers missing some core loader nodes
                InputSpec("vae_file", "COMBO", default="none", options=COMPANION_CHOICES,
                          tooltip="For an official checkpoint: its VAE file (vae_ch160v4096z32.pth for VAR, "
                                  "infinity_vae_d32reg.pth for Infinity 2B, infinitystar_videovae.pth)."),
                InputSpec("text_encoder", "COMBO", default="none", options=TEXT_ENCODER_CHOICES,
                          tooltip="Infinity / InfinityStar official files: the flan-T5-XL folder (models/"
                                  "text_encoders/flan-t5-xl). none for VAR and saved folders that bring one."),
                InputSpec("dtype", "COMBO", default="fp32", options=tuple(DTYPES),
                          tooltip="Weight precision; fp32 is exact, bf16/fp16 halve memory on GPUs."),
                InputSpec("quantization", "COMBO", default="auto", options=QUANTIZATION_CHOICES,
                          tooltip="Transformer weights: int8 (TorchAO), nf4 (bitsandbytes, CUDA), fp8 (stored "
                                  "fp8, computed bf16), none. auto: none unless the free VRAM needs it (planned "
                                  "for the model's default call)."),
                InputSpec("offload", "COMBO", default="auto", options=OFFLOAD_CHOICES,
                          tooltip="none: all on the GPU; model: the text encoder leaves before sampling; group: "
                                  "transformer blocks streamed in; sequential: layer by layer (slowest). auto: "
                                  "the sampler plans each run and picks the least costly mode that fits."),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGClassConditioning",
            "VPG Class Conditioning",
            "The classes to generate: names (any synonym, case-insensitive) or ids, separated by commas or lines.",
            (
                _model_in,
                InputSpec("classes", "STRING", default="face-happy", multiline=True,
                          tooltip="Class names or ids, e.g. 'golden retriever, 980' (ImageNet), 'face-happy' (demo)."),
            ),
            (OutputSpec(COND, "conditioning"),),
        ),
        NodeSpec(
            "VPGTextEncode",
            "VPG Text Encode",
            "The prompt of a text model (Infinity, InfinityStar), encoded with the model's own T5 (Infinity: "
            "here; InfinityStar: in the sampler, because its official caption carries the video duration).",
            (
                _model_in,
                InputSpec("prompt", "STRING", default="a red fox in the snow, photo", multiline=True,
                          tooltip="What to generate."),
                InputSpec("negative_prompt", "STRING", default="", multiline=True,
                          tooltip="Replaces the learned null text of CFG/APG; empty keeps it (the official default)."),
            ),
            (OutputSpec(COND, "conditioning"),),
        ),
        NodeSpec(
            "VPGCFG",
            "VPG CFG",
            "Classifier-free guidance for a VPG model (returns a patched copy; the input model is unchanged).",
            (
                _model_in,
                InputSpec("cfg", "FLOAT", default=1.5, min=0.0, max=30.0, step=0.05,
                          tooltip="The guidance_scale. VAR: linear ramp to 1+cfg at the last scale (0 = off); "
                                  "Infinity / InfinityStar: the official cfg, constant (1 = off; Infinity 2B: 3)."),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGAPG",
            "VPG APG",
            "Adaptive projected guidance for InfinityStar (its released setting: cfg 34, norm threshold 0.05); "
            "use instead of VPG CFG. Returns a patched copy.",
            (
                _model_in,
                InputSpec("cfg", "FLOAT", default=34.0, min=0.0, max=100.0, step=0.5,
                          tooltip="The official cfg of APG (1 = off)."),
                InputSpec("norm_threshold", "FLOAT", default=0.05, min=0.0, max=10.0, step=0.01,
                          tooltip="Bound on the RMS of cond - uncond (apg_norm_threshold; 0 = no bound)."),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGPrefixGuidance",
            "VPG Prefix Guidance",
            "Visual Prefix Guidance: out = corrupted + w * (clean - corrupted), where the corrupted branch sees a "
            "prefix whose sites were swapped with donors of the same scale. Chain after VPG CFG.",
            (
                _model_in,
                InputSpec("vpg_scale", "FLOAT", default=1.5, min=0.0, max=20.0, step=0.05,
                          tooltip="w; 1 = off. Paper values for VAR: d16 3.0, d20 2.4, d24 1.8, d30 1.3."),
                InputSpec("corruption", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.05,
                          tooltip="Fraction p of each prefix scale's sites that take a donor's input (0 = off)."),
                InputSpec("mode", "COMBO", default="full", options=MODES,
                          tooltip="full: donor content+position (paper); token; position; codebook (random code)."),
                InputSpec("refresh", "COMBO", default="persistent", options=REFRESH,
                          tooltip="persistent: each scale corrupted once (fast); resample: fresh corruption per step."),
                InputSpec("scales", "STRING", default="all",
                          tooltip="'all', 'semantic' (early scales) or scale indices like '1,2,3' or '1-4'."),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGIGG",
            "VPG IGG",
            "Information-Grounding Guidance: adds t * softmax(d d^T / sqrt(V)) d, d = cond - uncond over the "
            "scale's sites, with t = 1 + w * k/(K-1); on top of VPG CFG / APG, or in CFG's place when the chain "
            "has none. Returns a patched copy. Cost grows with the square of a scale's sites.",
            (
                _model_in,
                InputSpec("igg_scale", "FLOAT", default=1.0, min=0.0, max=20.0, step=0.05,
                          tooltip="w (0 still adds the grounding term with t = 1; remove the node to turn IGG off)."),
                InputSpec("schedule", "COMBO", default="linear", options=IGG_SCHEDULES,
                          tooltip="linear: t = 1 + w*k/(K-1) (the paper); constant: t = 1 + w at every scale."),
                *_range_inputs(),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGSSG",
            "VPG SSG",
            "Scaled Spatial Guidance: logits + beta * (logits - prior), the prior being the previous scale's "
            "logits brought to the new grid in the frequency domain (DSE). No extra model pass. Returns a "
            "patched copy.",
            (
                _model_in,
                InputSpec("ssg_scale", "FLOAT", default=0.5, min=0.0, max=10.0, step=0.05,
                          tooltip="beta (0 = off)."),
                InputSpec("interpolation", "COMBO", default="linear", options=INTERPOLATIONS,
                          tooltip="Kernel that brings the previous scale to the new grid before its low "
                                  "frequencies are restored exactly."),
                *_range_inputs(),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGEntropyTemperature",
            "VPG Entropy Temperature",
            "Entropy-aware temperature, after all guidance: each site is sampled at T = base * (t0 * "
            "exp(-H/alpha) + theta), H the entropy of its guided distribution. Returns a patched copy.",
            (
                _model_in,
                InputSpec("t0", "FLOAT", default=PAPER.t0, min=0.0, max=10.0, step=0.05,
                          tooltip=f"T0 (paper: {PAPER.t0:g})."),
                InputSpec("alpha", "FLOAT", default=PAPER.alpha, min=0.01, max=50.0, step=0.05,
                          tooltip=f"alpha, in nats (paper: {PAPER.alpha:g})."),
                InputSpec("theta", "FLOAT", default=PAPER.theta, min=0.0, max=10.0, step=0.05,
                          tooltip=f"theta (paper: {PAPER.theta:g})."),
                InputSpec("base", "FLOAT", default=1.0, min=0.01, max=10.0, step=0.01,
                          tooltip="T_base, on top of the model's own temperature."),
                *_range_inputs(),
            ),
            (OutputSpec(MODEL, "model"),),
        ),
        NodeSpec(
            "VPGSampler",
            "VPG Sampler",
            "Samples every scale of the model with its guidance chain; a preview after each scale.",
            (
                _model_in,
                InputSpec("conditioning", COND, tooltip="From VPG Class Conditioning (same loader as the model)."),
                InputSpec("seed", "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                          tooltip="Image i of the batch uses seed + i."),
                InputSpec("batch_size", "INT", default=1, min=1, max=64, tooltip="Images per class."),
                InputSpec("top_k", "INT", default=900, min=0, max=100000,
                          tooltip="Keep the k most likely tokens (0 = off). VAR evaluation: 900."),
                InputSpec("top_p", "FLOAT", default=0.96, min=0.0, max=1.0, step=0.01,
                          tooltip="Nucleus sampling (0 = off). VAR evaluation: 0.96."),
            ),
            (OutputSpec(IMAGE, "images"), OutputSpec(GUIDANCE, "guidance")),
        ),
        NodeSpec(
            "VPGTextImageSampler",
            "VPG Text-to-Image Sampler",
            "Samples every scale of a text-to-image model (Infinity) with its guidance chain; a preview after "
            "each scale.",
            (
                _model_in,
                InputSpec("conditioning", COND, tooltip="From VPG Text Encode (same loader as the model)."),
                InputSpec("seed", "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                          tooltip="Image i of the batch uses seed + i."),
                InputSpec("size", "COMBO", default=DEFAULT_SIZE, options=infinity_sizes(),
                          tooltip="height x width of the official schedules; default: the model's (1024x1024 "
                                  "for the released models)."),
                InputSpec("batch_size", "INT", default=1, min=1, max=64, tooltip="Images of the prompt."),
                InputSpec("tau", "FLOAT", default=0.5, min=0.01, max=5.0, step=0.01,
                          tooltip="Temperature (official: 0.5 for 2B, 1.0 for 8B)."),
                InputSpec("cfg_insertion_layer", "INT", default=0, min=-64, max=0,
                          tooltip="0: CFG on the logits (official); -n: on the hidden states after block depth-n."),
                InputSpec("top_k", "INT", default=900, min=0, max=100000, tooltip="Per-bit top-k (0 = off)."),
                InputSpec("top_p", "FLOAT", default=0.97, min=0.0, max=1.0, step=0.01,
                          tooltip="Per-bit top-p (0 = off). Official: 0.97."),
            ),
            (OutputSpec(IMAGE, "images"), OutputSpec(GUIDANCE, "guidance")),
        ),
        NodeSpec(
            "VPGVideoSampler",
            "VPG Video Sampler",
            "Samples a text-to-video model (InfinityStar) with its guidance chain, or image-to-video from an "
            "optional start_image: the frames as an IMAGE batch and a VIDEO (at the model's fps) for Save Video.",
            (
                _model_in,
                InputSpec("conditioning", COND, tooltip="From VPG Text Encode (same loader as the model)."),
                InputSpec("seed", "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                          tooltip="Video i of the batch uses seed + i."),
                InputSpec("num_frames", "INT", default=81, min=1, max=1025,
                          tooltip="1 (an image) or 1 + 16 k up to the model's length (81 = 5 s at 16 fps)."),
                InputSpec("size", "COMBO", default=DEFAULT_SIZE, options=infinity_star_sizes(),
                          tooltip="height x width of the official schedules; default: the model's (720x1280 for "
                                  "the released 720p model)."),
                InputSpec("batch_size", "INT", default=1, min=1, max=16,
                          tooltip="Videos of the prompt (the VIDEO output plays them one after another)."),
                InputSpec("tau_image", "FLOAT", default=1.0, min=0.01, max=5.0, step=0.01,
                          tooltip="Temperature of the first (image) clip; official 1.0."),
                InputSpec("tau_video", "FLOAT", default=0.4, min=0.01, max=5.0, step=0.01,
                          tooltip="Temperature of the video clips; official 0.4."),
                InputSpec("start_image", IMAGE, optional=True,
                          tooltip="Optional: image-to-video. The first frame (cropped to the video size); one "
                                  "image for all videos or one per video (batch_size images)."),
            ),
            (OutputSpec(IMAGE, "frames"), OutputSpec(VIDEO, "video")),
        ),
        NodeSpec(
            "VPGGuidanceMap",
            "VPG Guidance Map",
            "Where Prefix Guidance changed the prediction most: one tile per scale (total-variation distance "
            "between the token distributions before and after VPG), then the image with the summed map over it.",
            (
                InputSpec("guidance", GUIDANCE, tooltip="The guidance output of a VPG Sampler."),
                InputSpec("normalize", "COMBO", default="per scale", options=NORMALIZE,
                          tooltip="per scale: each tile to its own maximum; shared: one maximum for all scales."),
                InputSpec("cell", "INT", default=128, min=16, max=1024, step=16, tooltip="Tile size in pixels."),
            ),
            (OutputSpec(IMAGE, "map"),),
        ),
    )
}
