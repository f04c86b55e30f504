"""Infinity as a model of the shared next-scale sampler (see ``models/adapter.py``).

Content of a site = its next-scale input (the accumulated codes, trilinear-resized to the scale's
grid, 2x2-patchified for the 8B model); position = its RoPE position id. Logits are the per-bit
pairs ``(B, n, bits_per_site, 2)`` divided by the scale's temperature ``tau``, i.e. what the official
sampler combines with CFG. Sampling draws every bit independently with the official top-k / top-p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..adapter import HiddenHook, RowBatch, ScaleStep, StepInput
from ..kv_cache import KVCache
from ..sample import Generators, sample_top_k_top_p
from .bsq_vae import InfinityBSQVAE, unpatchify_bits, upsample_codes
from .schedules import InfinitySchedule
from .transformer import InfinityCondition, InfinityTransformer


def scale_steps(schedule: InfinitySchedule) -> list[ScaleStep]:
    """One step per scale of ``schedule``; the last scale's keys/values are not kept (no later scale attends
    to them: the 1024 px cache holds 6425 of 10521 tokens)."""
    final = max(schedule.grids[-1])
    last = len(schedule.grids) - 1
    return [
        ScaleStep(index=k, scale=k, num_sites=h * w, grid=(h, w), store_kv=k < last, semantic=max(h, w) <= final / 2)
        for k, (h, w) in enumerate(schedule.grids)
    ]


@dataclass
class InfinityState:
    """Per-call state.

    Attributes:
        condition: text rows (B real rows, then B null/negative rows when CFG is on).
        schedule: the scale schedule.
        latents: ``(B, d, 1, H, W)`` accumulated codes at VAE resolution (``summed_codes``; what
            callbacks see and what the decoder takes).
        tau: temperature per scale.
        top_k, top_p: official per-bit filtering (900 and 0.97 by default: top-k is a no-op on bits).
        next_input: ``(B, n, bits_per_site)`` input of the next step (``None`` before scale 1).
        bits: per sampled scale, ``(B, 1, h', w', d)`` bits at VAE resolution (un-patchified).
    """

    condition: InfinityCondition
    schedule: InfinitySchedule
    latents: torch.Tensor
    tau: list[float]
    top_k: int = 900
    top_p: float = 0.97
    next_input: torch.Tensor | None = None
    bits: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]


class InfinityAdapter:
    """Drives :class:`InfinityTransformer` + :class:`InfinityBSQVAE` through the shared loop."""

    def __init__(self, transformer: InfinityTransformer, vae: InfinityBSQVAE) -> None:
        bits = transformer.bits_per_site
        d = vae.config.codebook_dim
        patch = bool(transformer.config.apply_spatial_patchify)
        if bits != d * (4 if patch else 1):
            raise ValueError(f"transformer predicts {bits} bits per site but the VAE has {d} bits per site "
                             f"(spatial patchify {'on' if patch else 'off'})")
        self.transformer, self.vae = transformer, vae
        self.patchify = patch
        self.num_layers = transformer.config.depth
        self.supports_token_plans = True
        self.supports_stream_plans = True

    def prepare(
        self,
        text_features: torch.Tensor,
        text_lens: Sequence[int] | torch.Tensor,
        schedule: InfinitySchedule,
        with_null: bool,
        tau: float | Sequence[float] = 1.0,
        top_k: int = 900,
        top_p: float = 0.97,
        negative_features: torch.Tensor | None = None,
        negative_lens: Sequence[int] | torch.Tensor | None = None,
    ) -> InfinityState:
        """Condition rows and an empty latent.

        With ``with_null`` (CFG on) every prompt gets a second row: the negative prompt's features
        when given, else the learned null text truncated to the prompt's own length.
        """
        if schedule.spatial_patchify != self.patchify:
            raise ValueError(f"`schedule.spatial_patchify` must be {self.patchify} for this transformer")
        lens = torch.as_tensor(text_lens, dtype=torch.long).cpu()
        batch = int(lens.numel())
        taus = [float(tau)] * schedule.num_scales if isinstance(tau, (int, float)) else [float(t) for t in tau]
        if len(taus) != schedule.num_scales or any(not t > 0 for t in taus):
            raise ValueError(f"`tau` must be a positive number or {schedule.num_scales} positive numbers, got {tau!r}")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"`top_k` must be a non-negative integer, got {top_k!r}")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"`top_p` must be in [0, 1], got {top_p!r}")
        if negative_features is not None and with_null:
            neg_lens = torch.as_tensor(negative_lens, dtype=torch.long).cpu()
            if neg_lens.numel() != batch:
                raise ValueError(f"`negative_lens` must have one length per prompt ({batch}), got {neg_lens.tolist()}")
            condition = self.transformer.encode_text(
                torch.cat([text_features, negative_features.to(text_features)]), torch.cat([lens, neg_lens]))
        else:
            condition = self.transformer.encode_text(text_features, lens, null_rows=with_null)
        h, w = schedule.vae_grids[-1]
        latents = torch.zeros(batch, self.vae.config.codebook_dim, 1, h, w, device=condition.pooled.device)
        return InfinityState(condition, schedule, latents, taus, top_k, float(top_p))

    def steps(self, state: InfinityState) -> list[ScaleStep]:
        return scale_steps(state.schedule)

    def num_condition_rows(self, state: InfinityState) -> int:
        return state.condition.rows

    def step_input(self, state: InfinityState, step: ScaleStep) -> StepInput:
        positions = state.schedule.position_ids(step.scale).to(state.latents.device)
        if step.scale == 0:
            return StepInput(None, positions)
        if state.next_input is None or len(state.bits) != step.scale:
            raise RuntimeError(f"the input of scale {step.scale} needs the codes of the {step.scale} earlier scales")
        return StepInput(state.next_input, positions)

    def forward(
        self,
        state: InfinityState,
        batch: RowBatch,
        kv_cache: KVCache,
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
    ) -> torch.Tensor:
        device = batch.position_ids.device
        scale_ids = torch.cat([torch.full((s.num_sites,), s.scale, dtype=torch.long) for s in batch.steps])
        steps = None
        if len(batch.steps) > 1:
            steps = torch.cat([torch.full((s.num_sites,), s.index, dtype=torch.long) for s in batch.steps])
        logits = self.transformer(
            state.condition,
            batch.content,
            batch.position_ids,
            scale_ids.to(device),
            cond_index=batch.cond_index,
            include_start=batch.content is None,
            token_steps=None if steps is None else steps.to(device),
            kv_cache=kv_cache,
            store_kv=all(s.store_kv for s in batch.steps),
            hidden_hook=hidden_hook,
            last_tokens=last_tokens,
            token_plan=batch.token_plan,
        )
        inv_tau = torch.tensor([1 / t for t in state.tau], dtype=logits.dtype)[scale_ids].to(logits.device)
        if last_tokens is not None:
            inv_tau = inv_tau[-last_tokens:]
        logits = logits * inv_tau[None, :, None]
        return logits.view(logits.shape[0], logits.shape[1], -1, 2)

    def random_content(self, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Contents of uniformly random bit codes (4 VAE sites each, channel order c*4 + j, with patchify)."""
        d = self.vae.config.codebook_dim
        groups = 4 if self.patchify else 1
        gen_device = generator.device if generator is not None else torch.device("cpu")
        bits = torch.randint(0, 2, (count, groups, d), generator=generator, device=gen_device)
        codes = self.vae.quantizer.bits_to_code_vectors(bits.to(device))
        return codes.transpose(1, 2).reshape(count, groups * d)

    def sample(self, state: InfinityState, logits: torch.Tensor, step: ScaleStep, generator: Generators
               ) -> torch.Tensor:
        """Bits ``(B, n, bits_per_site)``: every bit drawn from its filtered pair, in (batch, site, bit) order."""
        batch, n, bits = logits.shape[:3]
        flat = logits.reshape(batch, n * bits, 2)
        return sample_top_k_top_p(flat, state.top_k, state.top_p, generator).view(batch, n, bits)

    def update(self, state: InfinityState, codes: torch.Tensor, step: ScaleStep) -> None:
        """Accumulate the scale's bit codes; build the next scale's input (trilinear, official order)."""
        h, w = step.grid
        bits = codes.reshape(state.batch_size, h, w, -1)
        if self.patchify:
            bits = unpatchify_bits(bits)
        bits = bits.unsqueeze(1)
        state.bits.append(bits)
        code = self.vae.bits_to_codes(bits).to(state.latents)
        vae_grids = state.schedule.vae_grids
        if step.scale < len(vae_grids) - 1:
            state.latents = state.latents + upsample_codes(code, vae_grids[-1])
            state.next_input = self.vae.next_scale_input(state.latents, vae_grids[step.scale + 1], self.patchify)
        else:
            state.latents = state.latents + code
            state.next_input = None

    def decode(self, state: InfinityState) -> torch.Tensor:
        """Images in [-1, 1] from the accumulated codes."""
        return self.vae.decode(state.latents)
