"""Activations of decoding (a meta replay of the whole VAE) and of encoding the prompt (T5, by formula)."""

from __future__ import annotations

import torch
from torch import nn

from .replay import META, meta_copy, peak_of


def decode_bytes(kind: str, vae: nn.Module, latents: tuple[int, ...], dtype: torch.dtype) -> int:
    """Peak bytes a pipeline's decode allocates for ``latents`` (its shape), output post-processing
    to ``"pt"`` included (``"pil"`` / ``"np"`` convert on the host)."""
    copy = meta_copy(vae, dtype)
    z = torch.empty(latents, device=META, dtype=dtype)

    def run() -> torch.Tensor:
        if kind == "var":
            images = copy.decode_latent(z)
        elif kind == "infinity":
            images = copy.decode(z)
        else:  # InfinityStar: VPGInfinityStarPipeline.decode_latents
            video = copy.decode(z).float().clamp(-1, 1)
            if video.shape[2] > 1:
                video[:, :, 0] = video[:, :, 1]
            return (video * 0.5 + 0.5).clamp(0, 1)
        return (images.float() * 0.5 + 0.5).clamp(0, 1)

    peak, _ = peak_of(run)
    return peak


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
