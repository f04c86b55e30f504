"""Activations of decoding (a meta replay of the VAE) and of encoding the prompt (T5, by formula).

A tiled InfinityStar decode (``vae.enable_tiling``) is replayed on a representative part of the video:
the whole output video is allocated as in the real decode, then only the tiles of every distinct shape
(a full tile and the last one along each axis) are decoded, through the first three temporal chunks.
Every other tile and chunk repeats one of those allocation for allocation (same shapes, the same
cache alive, the output preallocated), so the peak is the real decode's; ``tests/memory`` compares it
with a real tiled decode on the CPU.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..models.infinity_star.vae_tiling import (
    LATENT_STRIDE,
    TileSettings,
    decode_tiled,
    representative_extent,
    representative_frames,
)
from ..models.infinity_star.video_vae import InfinityStarVideoVAE
from .replay import META, meta_copy, peak_of

_PLANNED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()
"""Decode peaks already replayed, per VAE (one call is planned for several weight formats of the transformer)."""


def decode_bytes(kind: str, vae: nn.Module, latents: tuple[int, ...], dtype: torch.dtype,
                 tiling: TileSettings | None = None) -> int:
    """Peak bytes a pipeline's decode allocates for ``latents`` (its shape), output post-processing
    to ``"pt"`` included (``"pil"`` / ``"np"`` convert on the host). InfinityStar: decoded with the VAE's
    slicing and with ``tiling`` (``None``: untiled)."""
    key = (kind, tuple(latents), dtype, tiling, getattr(vae, "use_slicing", None))
    planned = _PLANNED.setdefault(vae, {})
    if key not in planned:
        planned[key] = _replay_decode(kind, vae, latents, dtype, tiling)
    return planned[key]


def _replay_decode(kind: str, vae: nn.Module, latents: tuple[int, ...], dtype: torch.dtype,
                   tiling: TileSettings | None) -> int:
    copy = meta_copy(vae, dtype)
    z = torch.empty(latents, device=META, dtype=dtype)
    if isinstance(copy, InfinityStarVideoVAE):
        copy.use_slicing = vae.use_slicing
        copy.use_tiling, copy.tile_settings = tiling is not None, tiling or copy.tile_settings

    def run() -> torch.Tensor:
        if kind == "var":
            images = copy.decode_latent(z)
        elif kind == "infinity":
            images = copy.decode(z)
        else:  # InfinityStar: VPGInfinityStarPipeline.decode_latents
            video = _star_decode(copy, z).float().clamp(-1, 1)
            if video.shape[2] > 1:
                video[:, :, 0] = video[:, :, 1]
            return (video * 0.5 + 0.5).clamp(0, 1)
        return (images.float() * 0.5 + 0.5).clamp(0, 1)

    peak, _ = peak_of(run)
    return peak


def _star_decode(vae: InfinityStarVideoVAE, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode(latents)``; a tiled decode on its representative part (see the module docstring)."""
    if not vae.tiles_needed(latents):
        return vae.decode(latents)
    z = vae.decoder_latent(latents)
    out = vae.empty_video(z)
    tile_h, tile_w, stride_h, stride_w = vae.tile_settings.sites()
    frames = representative_frames(z.shape[2], vae.config.decode_chunk_frames)
    h = representative_extent(z.shape[3], tile_h, stride_h)
    w = representative_extent(z.shape[4], tile_w, stride_w)
    rows = 1 if vae.use_slicing else z.shape[0]  # every sample of a sliced batch decodes alike
    part = z[:rows, :, :frames, :h, :w]
    target = out[:rows, :, : 1 + vae.temporal_factor * (frames - 1), : LATENT_STRIDE * h, : LATENT_STRIDE * w]
    decode_tiled(part, vae.decode_chunks, vae.tile_settings, target)
    return out


def text_encoder_bytes(encoder: nn.Module, rows: int, tokens: int, dtype: torch.dtype) -> int:
    """An estimate of a T5 encoder's activations for ``rows`` prompts of ``tokens`` tokens.

    One layer at its widest: the hidden states and the attention input / output (4 x ``d_model``), the
    float32 attention scores with T5's relative position bias (2 x ``heads x tokens^2``), the gated
    feed-forward (3 x ``d_ff``), plus the float32 output features the pipeline keeps.
    """
    config = getattr(encoder, "config", None)
    if config is None or not hasattr(config, "d_model"):
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    d_model, d_ff, heads = int(config.d_model), int(config.d_ff), int(config.num_heads)
    per_layer = rows * tokens * (4 * d_model + 3 * d_ff) * size + 2 * rows * heads * tokens * tokens * 4
    return per_layer + rows * tokens * d_model * 4
