"""VAR as a model of the shared next-scale sampler (see ``models/adapter.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter import RowBatch, ScaleStep, StepInput
from ..kv_cache import KVCache
from ..sample import gumbel_softmax, multinomial_rows, top_k_top_p_filter
from .transformer import VARTransformer
from .vqvae import VARVQVAE


def scale_steps(patch_nums: list[int]) -> list[ScaleStep]:
    """One step per scale (side ``patch_nums[i]``). No later scale attends to the last one, so its keys/values
    are not kept (the cache holds every scale but the last: 424 of VAR-256's 680 tokens)."""
    half = patch_nums[-1] / 2
    last = len(patch_nums) - 1
    return [
        ScaleStep(index=i, scale=i, num_sites=p * p, grid=(p, p), store_kv=i < last, semantic=p <= half)
        for i, p in enumerate(patch_nums)
    ]


@dataclass
class VARState:
    """Per-call state: condition rows and the cumulative latent.

    ``latents`` is the cumulative feature map ``f_hat`` (B, Cvae, pn_K, pn_K): what callbacks see
    and may edit; each scale's input is derived from it (area-downsampled, as the official code does).
    """

    condition_labels: torch.Tensor
    latents: torch.Tensor
    top_k: int = 0
    top_p: float = 0.0
    more_smooth: bool = False

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]


class VARAdapter:
    """Drives :class:`VARTransformer` + :class:`VARVQVAE` through the shared loop."""

    def __init__(self, transformer: VARTransformer, vae: VARVQVAE) -> None:
        self.transformer, self.vae = transformer, vae
        self.patch_nums: list[int] = list(transformer.config.patch_nums)
        self.offsets = transformer.scale_offsets()
        self.num_layers = transformer.config.depth

    def prepare(
        self,
        class_labels: torch.Tensor,
        with_null: bool,
        device: torch.device,
        dtype: torch.dtype,
        top_k: int = 0,
        top_p: float = 0.0,
        more_smooth: bool = False,
    ) -> VARState:
        """Condition rows are the labels, followed by the null class when CFG is on."""
        labels = class_labels.to(device)
        if with_null:
            labels = torch.cat([labels, torch.full_like(labels, self.transformer.null_class)])
        side = self.patch_nums[-1]
        latents = torch.zeros(class_labels.shape[0], self.vae.Cvae, side, side, device=device, dtype=dtype)
        return VARState(labels, latents, top_k, top_p, more_smooth)

    def steps(self, state: VARState | None) -> list[ScaleStep]:
        return scale_steps(self.patch_nums)

    def num_condition_rows(self, state: VARState) -> int:
        return state.condition_labels.shape[0]

    def step_input(self, state: VARState, step: ScaleStep) -> StepInput:
        device = state.latents.device
        start = self.offsets[step.index]
        ids = torch.arange(start, start + step.num_sites, device=device)
        if step.index == 0:
            return StepInput(None, ids)
        side = self.patch_nums[step.index]
        content = torch.nn.functional.interpolate(state.latents, size=(side, side), mode="area")
        return StepInput(content.flatten(2).transpose(1, 2), ids)

    def forward(
        self,
        state: VARState,
        batch: RowBatch,
        kv_cache: KVCache,
        hidden_hook=None,
        last_tokens: int | None = None,
    ) -> torch.Tensor:
        return self.transformer(
            state.condition_labels,
            batch.content,
            batch.position_ids,
            include_start=batch.content is None,
            multi_scale=len(batch.steps) > 1,
            kv_cache=kv_cache,
            store_kv=all(s.store_kv for s in batch.steps),
            hidden_hook=hidden_hook,
            last_tokens=last_tokens,
            condition_index=batch.cond_index.to(state.condition_labels.device),
        )

    def random_content(self, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(0, self.vae.config.vocab_size, (count,), generator=generator, device=gen_device)
        return self.vae(idx.to(device))

    def sample(self, state: VARState, logits: torch.Tensor, step: ScaleStep, generator) -> torch.Tensor:
        """Top-k / top-p multinomial indices (B, n); with ``more_smooth`` the soft codes (B, n, Cvae).

        ``more_smooth`` follows the official order: the index draw still happens (it consumes the
        generator) and the Gumbel mixture is taken over the top-k/top-p filtered logits.
        """
        filtered = top_k_top_p_filter(logits.float(), state.top_k, state.top_p)
        indices = multinomial_rows(filtered.softmax(dim=-1), generator)
        if not state.more_smooth:
            return indices
        ratio = step.index / max(len(self.patch_nums) - 1, 1)
        tau = max(0.27 * (1 - ratio * 0.95), 0.005)
        gen = generator[0] if isinstance(generator, list) else generator
        if isinstance(generator, list):
            probs = torch.stack([gumbel_softmax(filtered[b : b + 1] * (1 + ratio), tau, g)[0]
                                 for b, g in enumerate(generator)])
        else:
            probs = gumbel_softmax(filtered * (1 + ratio), tau, gen)
        return self.vae.soft_lookup(probs)

    def update(self, state: VARState, codes: torch.Tensor, step: ScaleStep) -> None:
        h = self.vae(codes) if not codes.is_floating_point() else codes
        side = self.patch_nums[step.index]
        h = h.to(state.latents.dtype).transpose(1, 2).reshape(state.batch_size, -1, side, side)
        state.latents, _ = self.vae.next_scale_input(step.index, state.latents, h, self.patch_nums)

    def decode(self, state: VARState) -> torch.Tensor:
        """Images in [-1, 1] from the cumulative latent."""
        return self.vae.decode_latent(state.latents)
