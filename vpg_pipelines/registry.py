"""The model kinds the package knows, in one table: :data:`KINDS`.

A kind is one pipeline class with what everything above the pipelines needs to know about it: the file names
of its official checkpoints and their companion VAE, how it is conditioned, what it makes, whether its official
files take a T5 text encoder, the guidance terms of its CFG slot, its default dtype on a GPU, and the released
architectures (:class:`ReleasedModel`: constructor arguments, official settings, common sizes). The loader
(:mod:`vpg_pipelines.loading.auto`), the CLI, ``vpg eval``, the memory planner's ``vpg memory --model <name>``
and the ComfyUI loader read it; a new model kind, or a released variant of one, is an entry here.

Behaviour that differs per kind is a method of the pipeline class, not an entry here (``pipe.preview_image``,
``pipe.token_grid``, ``pipe.weight_modules``, ``pipe.num_scales``, ``pipe.cfg_schedule``, ``pipe.vae_dtype``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .models.infinity.bsq_vae import InfinityBSQVAE
from .models.infinity.transformer import InfinityTransformer
from .models.infinity_star.settings import VARIANT_ARGS, VARIANT_CHECKPOINTS, variant_of_checkpoint
from .models.infinity_star.transformer import InfinityStarTransformer
from .models.infinity_star.video_vae import InfinityStarVideoVAE
from .models.var.transformer import VARTransformer
from .models.var.vqvae import VARVQVAE
from .pipelines.pipeline_vpg_infinity import VPGInfinityPipeline
from .pipelines.pipeline_vpg_infinity_star import VPGInfinityStarPipeline
from .pipelines.pipeline_vpg_infinity_star_interact import VPGInfinityStarInteractPipeline
from .pipelines.pipeline_vpg_var import VPGVARPipeline

VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VAR_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
VAR_VQVAE = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2,
             "share_quant_resi": 4, "test_mode": True}
FLAN_T5_XL = {"vocab_size": 32128, "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32,
              "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
              "relative_attention_max_distance": 128, "is_encoder_decoder": False, "tie_word_embeddings": False}
"""google/flan-t5-xl's encoder configuration (``T5Config``): the text encoder of the released text models."""


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint (or family) of a kind, as the loaders read it off the released files.

    ``tests/memory/test_memory_released.py`` checks every entry against ``shared/spec/manifests``: an empty
    pipeline built from it has exactly the released keys and shapes.

    Attributes:
        transformer, vae: constructor arguments of the kind's transformer and VAE classes.
        text_encoder: the ``T5Config`` arguments of its text encoder (``None``: class-conditional).
        official_args: the official script's settings (InfinityStar ``official_args`` over the 720p script's;
            ``None``: none).
        sizes: common call sizes, name -> ``pipe(...)`` arguments; the first is the model's default.
        manifests: names of the transformer's and the VAE's manifests in ``shared/spec/manifests``.
        variant: the official script the checkpoint is run like (InfinityStar: ``"720p"``, ``"480p"``,
            ``"interact"``): the loaders' ``variant=``; ``None``: the kind has no variants.
        checkpoint: the released transformer checkpoint's name (for messages).
        pipeline_class: the pipeline that runs this variant; ``None``: the kind's.
    """

    transformer: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoder: Mapping[str, Any] | None = None
    official_args: Mapping[str, Any] | None = None
    sizes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    manifests: tuple[str, str] = ("", "")
    variant: str | None = None
    checkpoint: str = ""
    pipeline_class: type | None = None


@dataclass(frozen=True)
class ModelKind:
    """One pipeline class and what the loaders, the CLI, the planner and the nodes need to know about it.

    Attributes:
        name: short id (``"var"``).
        pipeline_class: the diffusers pipeline (its name is a saved folder's ``model_index.json`` ``_class_name``).
        transformer_class, vae_class: its components (what :class:`ReleasedModel` gives the arguments of).
        official_files: regular expression (``re.search`` on the file or folder name) of the released
            transformer checkpoints.
        companion_files: the same for the companion VAE file the transformer is loaded with.
        transformer_hint, companion_hint: what those files are called, for messages.
        conditioning: ``"class"`` (class ids / names) or ``"text"`` (prompts).
        media: ``"image"`` or ``"video"``.
        text_encoder: whether the official files take a T5 encoder (a transformers folder) for their prompts.
        guidance_kinds: the terms that can fill the call's CFG slot (``"cfg"``, ``"apg"``).
        gpu_dtype: the compute dtype on a GPU when none is asked for (CPU: float32).
        released: the released architectures of this kind, by name (``vpg memory --model <name>``).
        variant_of_file: the variant a released checkpoint's name says (``None``: the kind has no variants).
    """

    name: str
    pipeline_class: type
    transformer_class: type
    vae_class: type
    official_files: str
    companion_files: str
    transformer_hint: str
    companion_hint: str
    conditioning: str
    media: str
    text_encoder: bool
    guidance_kinds: tuple[str, ...]
    gpu_dtype: torch.dtype
    released: Mapping[str, ReleasedModel] = field(default_factory=dict)
    variant_of_file: Callable[[str], str | None] | None = None

    def __post_init__(self) -> None:
        if self.conditioning not in ("class", "text"):
            raise ValueError(f"`conditioning` must be 'class' or 'text', got {self.conditioning!r}")
        if self.media not in ("image", "video"):
            raise ValueError(f"`media` must be 'image' or 'video', got {self.media!r}")

    @property
    def class_name(self) -> str:
        """The ``_class_name`` of this kind's saved folders."""
        return self.pipeline_class.__name__

    def is_official_file(self, path: str | Path) -> bool:
        """Whether ``path``'s name is one of this kind's released transformer checkpoints."""
        return re.search(self.official_files, Path(path).name) is not None

    def is_companion_file(self, path: str | Path) -> bool:
        """Whether ``path``'s name is one of this kind's companion VAE files."""
        return re.search(self.companion_files, Path(path).name) is not None

    @property
    def variants(self) -> dict[str, ReleasedModel]:
        """The released entries by variant name (empty: the kind has no variants)."""
        return {spec.variant: spec for spec in self.released.values() if spec.variant is not None}

    def variant(self, name: str) -> ReleasedModel:
        """The released entry of variant ``name``; ``ValueError`` naming ``variant`` and the allowed names."""
        variants = self.variants
        if name not in variants:
            allowed = tuple(variants) or "none"
            raise ValueError(f"`variant` of {self.name} models must be one of {allowed}, got {name!r}")
        return variants[name]

    def variant_for_file(self, path: str | Path) -> str | None:
        """The variant a checkpoint's name says (``..._480p_...`` -> ``"480p"``; ``None``: none)."""
        return None if self.variant_of_file is None else self.variant_of_file(Path(path).name)

    def pipeline_class_for(self, variant: str | None) -> type:
        """The pipeline that runs ``variant`` (``None``: the kind's)."""
        spec = None if variant is None else self.variant(variant)
        return spec.pipeline_class if spec is not None and spec.pipeline_class is not None else self.pipeline_class

    @property
    def pipeline_classes(self) -> tuple[type, ...]:
        """The kind's pipeline class and its variants' own classes."""
        extra = [s.pipeline_class for s in self.released.values() if s.pipeline_class is not None]
        return tuple(dict.fromkeys([self.pipeline_class, *extra]))


def _var(depth: int, width: int, shared_aln: bool = False, patch_nums=VAR_256) -> dict:
    return {"vocab_size": 4096, "vae_channels": 32, "num_classes": 1000, "depth": depth, "embed_dim": width,
            "num_heads": depth, "mlp_ratio": 4.0, "shared_aln": shared_aln, "attn_l2_norm": True,
            "patch_nums": patch_nums}


def _infinity(codebook_dim: int, patchify: int, width: int, depth: int, heads: int, vae_patch: int,
              ch_mult: tuple[int, ...], manifests: tuple[str, str]) -> ReleasedModel:
    return ReleasedModel(
        {"codebook_dim": codebook_dim, "apply_spatial_patchify": patchify, "text_channels": 2048, "text_maxlen": 512,
         "embed_dim": width, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "shared_aln": True,
         "cos_attn": True, "num_block_chunks": 8},
        {"codebook_dim": codebook_dim, "patch_size": vae_patch, "base_ch": 128, "encoder_ch_mult": ch_mult,
         "decoder_ch_mult": ch_mult, "num_res_blocks": 2},
        text_encoder=FLAN_T5_XL,
        sizes={"1024": {"height": 1024, "width": 1024}, "512": {"height": 512, "width": 512}},
        manifests=manifests,
    )


def _infinity_star(variant: str, sizes: Mapping[str, Mapping[str, Any]],
                   pipeline_class: type | None = None) -> ReleasedModel:
    """One InfinityStar checkpoint: the 8B architecture (all three share it) run like its official script."""
    return ReleasedModel(
        {"vae_channels": 64, "text_channels": 2048, "text_maxlen": 512, "embed_dim": 4096, "depth": 36,
         "num_block_chunks": 6, "num_heads": 32, "num_key_value_heads": 8, "mlp_ratio": 4.0, "detail_bits": 64,
         "semantic_bits": 16, "num_of_label_value": 2, "two_stage": True, "null_text_len": 512, "qkvo_bias": False},
        {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (96, 192, 384, 384, 384),
         "layers_per_block": 2, "temporal_compression": (2, 2), "spatial_compression": (2, 2, 2), "semantic_bits": 16,
         "detail_bits": 64, "use_feat_proj": 2},
        text_encoder=FLAN_T5_XL,
        official_args=VARIANT_ARGS[variant],
        sizes=sizes,
        manifests=("infinity_star_8b_720p", "infinity_star_videovae"),
        variant=variant,
        checkpoint=VARIANT_CHECKPOINTS[variant],
        pipeline_class=pipeline_class,
    )


KINDS: dict[str, ModelKind] = {
    "var": ModelKind(
        name="var",
        pipeline_class=VPGVARPipeline,
        transformer_class=VARTransformer,
        vae_class=VARVQVAE,
        official_files=r"^var_d\d+.*\.(pth|pt|bin|safetensors)$",
        companion_files=r"^vae",
        transformer_hint="var_d16.pth ... var_d36.pth",
        companion_hint="the VAR VQVAE file vae_ch160v4096z32.pth",
        conditioning="class",
        media="image",
        text_encoder=False,
        guidance_kinds=("cfg",),
        gpu_dtype=torch.float16,
        released={
            **{f"var-d{d}": ReleasedModel(_var(d, w), {**VAR_VQVAE, "v_patch_nums": VAR_256}, sizes={"256": {}},
                                          manifests=(f"var_d{d}", "var_vqvae"))
               for d, w in ((16, 1024), (20, 1280), (24, 1536), (30, 1920))},
            "var-d36": ReleasedModel(_var(36, 2304, shared_aln=True, patch_nums=VAR_512),
                                     {**VAR_VQVAE, "v_patch_nums": VAR_512}, sizes={"512": {}},
                                     manifests=("var_d36", "var_vqvae")),
        },
    ),
    "infinity": ModelKind(
        name="infinity",
        pipeline_class=VPGInfinityPipeline,
        transformer_class=InfinityTransformer,
        vae_class=InfinityBSQVAE,
        official_files=r"^infinity_",
        companion_files=r"^infinity_vae",
        transformer_hint="infinity_2b_reg.pth or the 8B shard folder",
        companion_hint="the Infinity VAE file infinity_vae_d32reg.pth (2B) or infinity_vae_d56_f8_14_patchify.pth (8B)",
        conditioning="text",
        media="image",
        text_encoder=True,
        guidance_kinds=("cfg",),
        gpu_dtype=torch.float16,
        released={
            "infinity-2b": _infinity(32, 0, 2048, 32, 16, 16, (1, 2, 4, 4, 4), ("infinity_2b", "infinity_vae_d32")),
            "infinity-8b": _infinity(14, 1, 3584, 40, 28, 8, (1, 2, 4, 4), ("infinity_8b", "infinity_vae_d56")),
        },
    ),
    "infinity_star": ModelKind(
        name="infinity_star",
        pipeline_class=VPGInfinityStarPipeline,
        transformer_class=InfinityStarTransformer,
        vae_class=InfinityStarVideoVAE,
        official_files=r"^infinitystar_|^InfinityStarInteract",
        companion_files=r"videovae",
        transformer_hint="the shard folder infinitystar_8b_720p_weights, infinitystar_8b_480p_weights or "
                         "InfinityStarInteract_24K_iters",
        companion_hint="the InfinityStar video VAE infinitystar_videovae.pth",
        conditioning="text",
        media="video",
        text_encoder=True,
        guidance_kinds=("cfg", "apg"),
        gpu_dtype=torch.bfloat16,
        released={
            "infinity-star-8b-720p": _infinity_star("720p", {"720p": {"height": 720, "width": 1280, "num_frames": 81}}),
            "infinity-star-8b-480p": _infinity_star("480p", {
                "480p 5 s": {"height": 480, "width": 848, "num_frames": 81},
                "480p 10 s": {"height": 480, "width": 848, "num_frames": 161},
            }),
            # one 5 s clip (window) of a story: the size of a 16:9 reference at the Interact script's budget
            "infinity-star-8b-interact": _infinity_star("interact", {"480p clip": {"height": 480, "width": 848}},
                                                        VPGInfinityStarInteractPipeline),
        },
        variant_of_file=variant_of_checkpoint,
    ),
}
"""Every model kind, by name."""


def kind_of(pipeline: Any) -> ModelKind:
    """The kind of a pipeline object or class (subclasses and variants' classes included), a ``_class_name`` or
    a kind's name."""
    for kind in KINDS.values():
        classes = kind.pipeline_classes
        if isinstance(pipeline, str):
            if pipeline == kind.name or pipeline in (c.__name__ for c in classes):
                return kind
        elif isinstance(pipeline, classes) or (isinstance(pipeline, type) and issubclass(pipeline, classes)):
            return kind
    what = pipeline if isinstance(pipeline, str) else getattr(pipeline, "__name__", type(pipeline).__name__)
    known = ", ".join(f"{k.name} ({k.class_name})" for k in KINDS.values())
    raise ValueError(f"{what!r} is not a model kind of vpg_pipelines; known: {known}")


def kind_for_official_file(path: str | Path) -> ModelKind | None:
    """The kind whose released transformer checkpoints are named like ``path`` (``None``: no kind's)."""
    return next((kind for kind in KINDS.values() if kind.is_official_file(path)), None)


def released_names() -> list[str]:
    """Every released architecture's name, kind by kind."""
    return [name for kind in KINDS.values() for name in kind.released]


def released_model(name: str) -> tuple[ModelKind, ReleasedModel]:
    """The kind and the entry of the released architecture ``name`` (``"var-d16"``, ``"infinity-2b"`` ...)."""
    for kind in KINDS.values():
        if name in kind.released:
            return kind, kind.released[name]
    raise ValueError(f"unknown released model {name!r}; known: {', '.join(released_names())}")
