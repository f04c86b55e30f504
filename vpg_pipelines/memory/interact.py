"""Planning one clip of an InfinityStar-Interact call (``VPGInfinityStarInteractPipeline``).

Every clip of a story runs the same steps with the same cache and decodes the same 40 latent frames; nothing the
pipeline keeps on the accelerator grows with the number of clips (the context, 21 latent frames, replaces the
previous one; decoded frames go to the host). So the plan of a call is the plan of one clip: the prompt's
encoding (one prompt at a time), the reference video's encoding (once, before the first clip; not with
``context_latents``), the clip's sampler steps and its decode.

* The cache holds the text and the two conditions (the prefix, forwarded once per clip) and nothing else: no
  step of a clip keeps its keys and values. The prefill's activations are the replay of those three forwards.
* The sampler state adds the context ``(B, 64, 21, h, w)``, the reference's first latent frame and the two
  conditions' inputs to what a plain InfinityStar step keeps.
* Decoding: ``[context frames 1..20, the clip]`` (40 latent frames) through the VAE, the last 80 frames kept.
* The reference: 81 frames cover-resized to the output size, on the VAE's device, encoded.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..models.infinity_star.adapter import InfinityStarState
from ..models.infinity_star.interact import (
    CONTEXT_LATENT_FRAMES,
    REFERENCE_PIXEL_FRAMES,
    WINDOW_LATENT_FRAMES,
    WINDOW_PIXEL_FRAMES,
    InfinityStarInteractAdapter,
    InteractState,
    window_conditions,
)
from ..models.infinity_star.vae_tiling import TileSettings
from .decode import text_encoder_bytes
from .replay import META, InfinityStarStepReplay, meta_copy, peak_of

FLOAT32 = 4


class InfinityStarInteractStepReplay(InfinityStarStepReplay):
    """:class:`InfinityStarStepReplay` of one clip: the prefix is the text and the two conditions."""

    def _setup(self, transformer: nn.Module) -> None:
        super()._setup(transformer)
        plan, batch = self.extra["plan"], self.extra["batch"]
        _, height, width = plan.schedule[-1]
        self.adapter = InfinityStarInteractAdapter(self.model, SimpleNamespace(codebook_dim=64))
        context = torch.empty(batch, 64, CONTEXT_LATENT_FRAMES, height, width, device=META)
        conditions = window_conditions(plan, context, context[:, :, :1], int(transformer.config.text_maxlen))
        fields = {name: getattr(self.state, name) for name in InfinityStarState.__dataclass_fields__}
        self.state = InteractState(**fields, conditions=conditions)
        self.prefix_tokens = self.adapter.num_prefix_tokens(self.state)

    def state_bytes(self, index: int, batch: int) -> int:
        """A plain InfinityStar step's state plus the clip's context, the reference's first frame and the
        conditions' inputs (float32)."""
        _, height, width = self.extra["plan"].schedule[-1]
        context = batch * 64 * (CONTEXT_LATENT_FRAMES + 1) * height * width * FLOAT32
        conditions = sum(c.content.numel() for c in self.state.conditions) * FLOAT32
        return super().state_bytes(index, batch) + context + conditions


def clip_decode_bytes(vae: nn.Module, batch: int, height: int, width: int, dtype: torch.dtype,
                      tiling: TileSettings | None = None) -> int:
    """Peak bytes of ``VPGInfinityStarInteractPipeline.decode_clip`` for ``batch`` stories on an ``height`` x
    ``width`` latent grid: the 40 joined latent frames, the decode (with the VAE's slicing and ``tiling``;
    ``None``: untiled), the kept 80 frames clamped (they go to the host before post-processing)."""
    copy = meta_copy(vae, dtype)
    copy.use_slicing = getattr(vae, "use_slicing", False)
    copy.use_tiling, copy.tile_settings = tiling is not None, tiling or copy.tile_settings

    def run() -> torch.Tensor:
        joined = torch.empty(batch, 64, 2 * WINDOW_LATENT_FRAMES, height, width, device=META)  # float32 codes
        video = copy.decode(joined.to(dtype))
        return video[:, :, -WINDOW_PIXEL_FRAMES:].float().clamp(-1, 1)

    return peak_of(run)[0]


def reference_encode_bytes(vae: nn.Module, height: int, width: int, dtype: torch.dtype,
                           sample_posterior: bool) -> int:
    """Peak bytes of ``VPGInfinityStarInteractPipeline.encode_reference`` at ``height`` x ``width`` pixels: the 81
    frames moved to the VAE's device, the encode, its float32 latents."""
    copy = meta_copy(vae, dtype)

    def run() -> torch.Tensor:
        pixels = torch.empty(1, 3, REFERENCE_PIXEL_FRAMES, height, width, device=META, dtype=dtype)
        return copy.encode(pixels, sample_posterior=sample_posterior).float()

    return peak_of(run)[0]


def plan_interact_clip(pipe: Any, call: Any, given: dict[str, Any], dtype: torch.dtype, vae_dtype: torch.dtype,
                       text_tokens: int | None, notes: list[str], tokens_of: Any, savers: dict | None = None) -> dict:
    """The model's part of the plan of an Interact call (``memory.calls``): the one-clip replay, the clip's decode,
    the prompt's and the reference's encoding. ``tokens_of(texts, fallback)`` counts a text's tokens."""
    a, plan = call.arguments, call.plan
    prompt = given.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    embeds, mask = given.get("prompt_embeds"), given.get("prompt_attention_mask")
    if embeds is not None:
        tokens = int(embeds.shape[1]) if mask is None else int(mask.sum(dim=1).max())
    else:
        negatives = given.get("negative_prompt")
        negatives = [negatives] if isinstance(negatives, str) else list(negatives or [])
        captions = [pipe.caption(p, 81) for p in texts]
        tokens = tokens_of(captions + [n for n in negatives if n], text_tokens or 512)
    rows = call.batch * (2 if call.with_null else 1)
    savers = savers or {}
    replay = InfinityStarInteractStepReplay(pipe.transformer, list(call.steps), rows, dtype, plan=plan,
                                            text_tokens=tokens, batch=call.batch, chunk_size=savers.get("chunk_size"),
                                            kv_offload=savers.get("kv_offload", False))
    _, h, w = plan.schedule[-1]
    encoder, encode = pipe.text_encoder, None
    if prompt is not None and encoder is not None:  # one prompt at a time, padded to text_maxlen (official)
        encoder_dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), dtype)
        encode = text_encoder_bytes(encoder, 1, int(pipe.transformer.config.text_maxlen), encoder_dtype)
    reference = None
    if a["video"] is not None:
        reference = reference_encode_bytes(pipe.vae, h * 16, w * 16, vae_dtype, bool(a["sample_posterior"]))
    decode = 0 if a["output_type"] == "latent" else clip_decode_bytes(pipe.vae, call.batch, h, w, vae_dtype,
                                                                       savers.get("tiling"))
    notes.append(f"per clip: each of the {call.num_clips} clips runs these steps and this decode; memory does not grow "
                 "with the number of clips")
    return {
        "replay": replay, "sampling_bytes": 8, "decode": decode, "encode": encode, "reference_encode": reference,
        "describe": {"size": f"{a['height']}x{a['width']}", "clips": call.num_clips,
                     "frames_per_clip": WINDOW_PIXEL_FRAMES, "text_tokens": tokens, "guidance": a["guidance"],
                     "condition_tokens": replay.prefix_tokens - tokens},
    }
