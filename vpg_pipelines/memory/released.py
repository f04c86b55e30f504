"""The released models' architectures, as empty (meta-device) pipelines: plan their memory without files.

The constructor arguments below are what the loaders read off the released checkpoints
(``tests/memory/test_memory_released.py`` checks every one against ``shared/spec/manifests``: the meta models
have exactly the released keys and shapes). The text encoder is flan-T5-XL's encoder (``T5EncoderModel``
with google/flan-t5-xl's configuration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accelerate import init_empty_weights

VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VAR_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
VAR_VQVAE = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2,
             "share_quant_resi": 4, "test_mode": True}
FLAN_T5_XL = {"vocab_size": 32128, "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32,
              "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
              "relative_attention_max_distance": 128, "is_encoder_decoder": False, "tie_word_embeddings": False}
STAR_480P_ARGS = {"pn": "0.40M", "image_scale_repetition": [3] * 14, "video_scale_repetition": [3] * 12 + [2, 1],
                  "detail_scale_min_tokens": 350, "semantic_scales": 11}
"""``tools/infer_video_480p.py``'s settings (as ``benchmarks/infinity_star_clip.py`` uses them)."""


def _var(depth: int, width: int, shared_aln: bool = False, patch_nums=VAR_256) -> dict:
    return {"vocab_size": 4096, "vae_channels": 32, "num_classes": 1000, "depth": depth, "embed_dim": width,
            "num_heads": depth, "mlp_ratio": 4.0, "shared_aln": shared_aln, "attn_l2_norm": True,
            "patch_nums": patch_nums}


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint family: its pipeline kind, constructor arguments and common sizes."""

    kind: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: bool = False
    official_args: dict[str, Any] | None = None
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Common call sizes: name -> ``pipe(...)`` arguments; the first is the model's default."""
    manifests: tuple[str, str] = ("", "")


RELEASED: dict[str, ReleasedModel] = {
    **{
        f"var-d{d}": ReleasedModel("var", _var(d, w), {**VAR_VQVAE, "v_patch_nums": VAR_256},
                                   sizes={"256": {}}, manifests=(f"var_d{d}", "var_vqvae"))
        for d, w in ((16, 1024), (20, 1280), (24, 1536), (30, 1920))
    },
    "var-d36": ReleasedModel("var", _var(36, 2304, shared_aln=True, patch_nums=VAR_512),
                             {**VAR_VQVAE, "v_patch_nums": VAR_512}, sizes={"512": {}},
                             manifests=("var_d36", "var_vqvae")),
    "infinity-2b": ReleasedModel(
        "infinity",
        {"codebook_dim": 32, "apply_spatial_patchify": 0, "text_channels": 2048, "text_maxlen": 512,
         "embed_dim": 2048, "depth": 32, "num_heads": 16, "mlp_ratio": 4.0, "shared_aln": True, "cos_attn": True,
         "num_block_chunks": 8},
        {"codebook_dim": 32, "patch_size": 16, "base_ch": 128, "encoder_ch_mult": (1, 2, 4, 4, 4),
         "decoder_ch_mult": (1, 2, 4, 4, 4), "num_res_blocks": 2},
        text_encoder=True,
        sizes={"1024": {"height": 1024, "width": 1024}, "512": {"height": 512, "width": 512}},
        manifests=("infinity_2b", "infinity_vae_d32"),
    ),
    "infinity-8b": ReleasedModel(
        "infinity",
        {"codebook_dim": 14, "apply_spatial_patchify": 1, "text_channels": 2048, "text_maxlen": 512,
         "embed_dim": 3584, "depth": 40, "num_heads": 28, "mlp_ratio": 4.0, "shared_aln": True, "cos_attn": True,
         "num_block_chunks": 8},
        {"codebook_dim": 14, "patch_size": 8, "base_ch": 128, "encoder_ch_mult": (1, 2, 4, 4),
         "decoder_ch_mult": (1, 2, 4, 4), "num_res_blocks": 2},
        text_encoder=True,
        sizes={"1024": {"height": 1024, "width": 1024}, "512": {"height": 512, "width": 512}},
        manifests=("infinity_8b", "infinity_vae_d56"),
    ),
    **{
        f"infinity-star-8b-{size}": ReleasedModel(
            "infinity_star",
            {"vae_channels": 64, "text_channels": 2048, "text_maxlen": 512, "embed_dim": 4096, "depth": 36,
             "num_block_chunks": 6, "num_heads": 32, "num_key_value_heads": 8, "mlp_ratio": 4.0, "detail_bits": 64,
             "semantic_bits": 16, "num_of_label_value": 2, "two_stage": True, "null_text_len": 512,
             "qkvo_bias": False},
            {"in_channels": 3, "out_channels": 3, "latent_channels": 16,
             "block_out_channels": (96, 192, 384, 384, 384), "layers_per_block": 2, "temporal_compression": (2, 2),
             "spatial_compression": (2, 2, 2), "semantic_bits": 16, "detail_bits": 64, "use_feat_proj": 2},
            text_encoder=True,
            official_args=args,
            sizes={size: {"height": hw[0], "width": hw[1], "num_frames": 81}},
            manifests=("infinity_star_8b_720p", "infinity_star_videovae"),
        )
        for size, args, hw in (("720p", None, (720, 1280)), ("480p", STAR_480P_ARGS, (480, 848)))
    },
}
"""Released models by name (``vpg memory --model <name>``)."""


def _text_encoder():
    from transformers import T5Config, T5EncoderModel

    with init_empty_weights():
        model = T5EncoderModel(T5Config(**FLAN_T5_XL)).eval()
    model.tie_weights()  # as from_pretrained does: the encoder's embedding is the shared one
    return model


def released_pipeline(name: str, official_args: dict[str, Any] | None = None):
    """An empty pipeline with ``name``'s architecture (meta weights): plan with it, do not run it.

    ``official_args`` (InfinityStar) replaces the entry's settings (``infinity-star-8b-480p``: the 480p
    script's; ``-720p``: the released 720p script's).
    """
    if name not in RELEASED:
        raise ValueError(f"unknown released model {name!r}; known: {', '.join(RELEASED)}")
    spec = RELEASED[name]
    if spec.kind == "var":
        from ..models.var.transformer import VARTransformer
        from ..models.var.vqvae import VARVQVAE
        from ..pipelines.pipeline_vpg_var import VPGVARPipeline

        with init_empty_weights():
            transformer, vae = VARTransformer(**spec.transformer), VARVQVAE(**spec.vae)
        return VPGVARPipeline(transformer.eval(), vae.eval())
    if spec.kind == "infinity":
        from ..models.infinity.bsq_vae import InfinityBSQVAE
        from ..models.infinity.transformer import InfinityTransformer
        from ..pipelines.pipeline_vpg_infinity import VPGInfinityPipeline

        with init_empty_weights():
            transformer, vae = InfinityTransformer(**spec.transformer), InfinityBSQVAE(**spec.vae)
        return VPGInfinityPipeline(transformer.eval(), vae.eval(), text_encoder=_text_encoder())
    from ..models.infinity_star.settings import resolve_args
    from ..models.infinity_star.transformer import InfinityStarTransformer
    from ..models.infinity_star.video_vae import InfinityStarVideoVAE
    from ..pipelines.pipeline_vpg_infinity_star import VPGInfinityStarPipeline

    args = resolve_args(official_args if official_args is not None else spec.official_args)
    with init_empty_weights():
        transformer = InfinityStarTransformer(**spec.transformer)
        vae = InfinityStarVideoVAE(**spec.vae, detail_scale_min_tokens=args["detail_scale_min_tokens"])
    return VPGInfinityStarPipeline(transformer.eval(), vae.eval(), text_encoder=_text_encoder(), official_args=args)
