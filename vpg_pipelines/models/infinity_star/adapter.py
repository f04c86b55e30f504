"""InfinityStar as a model of the shared next-scale sampler (see ``models/adapter.py``).

Steps are the (scale, repetition) pairs of :func:`~.schedules.plan_steps`. The text prefix is
forwarded once into the KV cache (:meth:`InfinityStarAdapter.prefill`); a step attends to the text,
to the scales in its ``ref_sids`` (through ``KVCache.visible``) and to itself. Only the last
repetition of a scale that a later scale refers to keeps its keys/values.

Content of a site: the clip's summed codes area-downsampled to the step's grid (64 channels).
Position of a site: one integer packing its four RoPE coordinates (scale axis, frame, row, column),
so that a corrupted site taking its donor's position id takes all four.

Codes are bits ``(B, t, h, w, d)``; :meth:`sample` draws them with ``torch.multinomial`` over two
classes per bit (the official sampler), unless the state forces the codes of the first steps (the
official image-to-video mechanism, also used for RNG-free parity replays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..adapter import HiddenHook, RowBatch, ScaleStep, StepInput
from ..kv_cache import KVCache
from ..sample import multinomial_rows
from .schedules import StarStep, StepPlan
from .transformer import InfinityStarTransformer
from .video_vae import InfinityStarVideoVAE


def plan_scale_steps(plan: StepPlan, conditioning_steps: int = 0) -> list[ScaleStep]:
    """The sampler's steps of ``plan``: one per (scale, repetition); the first ``conditioning_steps`` carry
    conditioning codes (image-to-video, continuation)."""
    return [
        ScaleStep(
            index=s.index, scale=s.scale, num_sites=s.num_sites, grid=s.grid, store_kv=s.store_kv,
            semantic=s.semantic_head, conditioning=s.index < conditioning_steps,
            extra={"ref_sids": s.ref_sids, "repeat": s.repeat, "clip": s.clip, "real_sid": s.real_sid},
        )
        for s in plan.steps
    ]


@dataclass
class InfinityStarState:
    """Per-call state: condition rows, the step plan and the summed codes of every clip.

    ``summed`` holds one ``(B, 64, t, H, W)`` tensor per clip started so far; callbacks may read or
    edit it (the next step's input is derived from it).
    """

    plan: StepPlan
    text_features: torch.Tensor
    text_lengths: torch.Tensor
    null_text: torch.Tensor
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    text_maxlen: int
    forced_bits: list[torch.Tensor] = field(default_factory=list)
    conditioning_steps: int = 0
    prefix_lengths: torch.Tensor | None = None
    summed: list[torch.Tensor] = field(default_factory=list)
    cache_ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    strides: tuple[int, int, int] = (1, 1, 1)

    @property
    def prefix_tokens(self) -> int:
        return int(self.text_features.shape[1])

    def text_key_mask(self, cond_index: torch.Tensor | None, keys: int) -> torch.Tensor | None:
        """Additive ``(R, 1, 1, keys)`` mask hiding the text padding beyond each row's sample length.

        The official sampler runs one sample, so its text prefix is as long as that sample's text; in
        a batch of texts of different lengths, a row must not see the extra padding (``None`` when no
        row has any).
        """
        lengths = self.prefix_lengths
        if lengths is None or bool((lengths == self.prefix_tokens).all()):
            return None
        if cond_index is not None:
            lengths = lengths[cond_index.to(lengths.device)]
        index = torch.arange(keys, device=lengths.device)
        hidden = (index[None, :] >= lengths[:, None]) & (index[None, :] < self.prefix_tokens)
        mask = torch.zeros(hidden.shape, dtype=torch.float32, device=self.device)
        return mask.masked_fill_(hidden.to(self.device), float("-inf"))[:, None, None]

    def pack_positions(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 4)`` coordinates -> one integer per site."""
        frames, rows, cols = self.strides
        return ((coords[..., 0] * frames + coords[..., 1]) * rows + coords[..., 2]) * cols + coords[..., 3]

    def unpack_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack_positions`."""
        frames, rows, cols = self.strides
        col = ids % cols
        rest = ids // cols
        row = rest % rows
        rest = rest // rows
        return torch.stack([rest // frames, rest % frames, row, col], dim=-1)


class InfinityStarAdapter:
    """Drives :class:`InfinityStarTransformer` + :class:`InfinityStarVideoVAE` through the shared loop."""

    def __init__(self, transformer: InfinityStarTransformer, vae: InfinityStarVideoVAE) -> None:
        self.transformer, self.vae = transformer, vae
        self.num_layers = transformer.config.depth
        self.logit_categories = int(transformer.config.num_of_label_value)
        """The logits' last dimension holds (bit, label) pairs flat: one 2-way distribution per bit."""
        self.supports_stream_plans = True

    # -- preparation -------------------------------------------------------------------------------
    def prepare(
        self,
        plan: StepPlan,
        text_features: Sequence[torch.Tensor],
        negative_text_features: Sequence[torch.Tensor | None] | None = None,
        with_null: bool = True,
        forced_bits: Sequence[torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        conditioning_steps: int = 0,
    ) -> InfinityStarState:
        """Condition rows: one text per sample, then (with ``with_null``) one negative per sample.

        Args:
            plan: the steps (see :func:`~.schedules.plan_steps`).
            text_features: per sample ``(L_b, text_channels)`` T5 features of the prompt's tokens.
            negative_text_features: per sample features of the negative prompt, or ``None`` (for all
                or one sample) to use the learned null text with the prompt's length (the official
                behaviour for an empty negative prompt).
            forced_bits: the codes of the first ``len(forced_bits)`` steps, each ``(B, t, h, w, d)``
                with the step's grid and codebook; the sampler's draw is replaced by them.
            conditioning_steps: how many of those are conditioning (an image, a continued video: the
                steps are marked ``ScaleStep.conditioning``) rather than a replay of generated codes.
        """
        device = torch.device(device)
        batch = len(text_features)
        if batch == 0:
            raise ValueError("`text_features` must hold at least one prompt")
        channels = self.transformer.config.text_channels
        rows = [torch.as_tensor(f) for f in text_features]
        lengths = [int(f.shape[0]) for f in rows]
        null = [False] * batch
        if with_null:
            negatives = list(negative_text_features) if negative_text_features is not None else [None] * batch
            if len(negatives) != batch:
                raise ValueError(f"`negative_text_features` has {len(negatives)} entries for {batch} prompts")
            for b, neg in enumerate(negatives):
                if neg is None or neg.shape[0] == 0:
                    rows.append(torch.zeros(lengths[b], channels))
                    lengths.append(lengths[b])
                    null.append(True)
                else:
                    rows.append(torch.as_tensor(neg))
                    lengths.append(int(neg.shape[0]))
                    null.append(False)
        for f in rows:
            if f.dim() != 2 or f.shape[1] != channels or f.shape[0] == 0:
                raise ValueError(f"text features must be (L > 0, {channels}), got {tuple(f.shape)}")
        # the prefix length of a sample (officially: its text's length; a longer negative is padded to)
        sample_lengths = [max(lengths[b::batch]) for b in range(batch)]
        longest = max(lengths)
        padded = torch.zeros(len(rows), longest, channels, device=device, dtype=dtype)
        for i, f in enumerate(rows):
            padded[i, : f.shape[0]] = f.to(device=device, dtype=dtype)
        state = InfinityStarState(
            plan=plan,
            text_features=padded,
            text_lengths=torch.tensor(lengths, device=device),
            null_text=torch.tensor(null, device=device),
            batch_size=batch,
            device=device,
            dtype=dtype,
            text_maxlen=self.transformer.config.text_maxlen,
            prefix_lengths=torch.tensor(sample_lengths * (len(rows) // batch), device=device),
        )
        final = plan.schedule[-1]
        frames = max(p.frame_end for p in plan.packs)
        state.strides = (frames, final[1], final[2])
        offset = state.prefix_tokens
        for s in plan.steps:
            if s.store_kv:
                state.cache_ranges[s.scale] = (offset, offset + s.num_sites)
                offset += s.num_sites
        if forced_bits:
            state.forced_bits = [self._check_bits(plan, plan.steps[i], b, batch) for i, b in enumerate(forced_bits)]
        if not 0 <= conditioning_steps <= len(state.forced_bits):
            raise ValueError(f"`conditioning_steps` must be in [0, {len(state.forced_bits)}] (the forced steps), "
                             f"got {conditioning_steps}")
        state.conditioning_steps = conditioning_steps
        return state

    @staticmethod
    def _check_bits(plan: StepPlan, step: StarStep, bits: torch.Tensor, batch: int) -> torch.Tensor:
        expected = (batch, *step.grid, plan.bits_of(step))
        if tuple(bits.shape) != expected:
            raise ValueError(f"forced bits of step {step.index} must be {expected}, got {tuple(bits.shape)}")
        return bits.long()

    @staticmethod
    def steps_before_scale(plan: StepPlan, scale: int) -> int:
        """Number of steps of the scales before ``scale`` (force that many for the official ``gt_leak``)."""
        return sum(1 for s in plan.steps if s.scale < scale)

    # -- protocol ----------------------------------------------------------------------------------
    def steps(self, state: InfinityStarState) -> list[ScaleStep]:
        return plan_scale_steps(state.plan, state.conditioning_steps)

    def num_condition_rows(self, state: InfinityStarState) -> int:
        return int(state.text_features.shape[0])

    def num_prefix_tokens(self, state: InfinityStarState) -> int:
        return state.prefix_tokens

    def prefill(self, state: InfinityStarState, kv_cache: KVCache) -> None:
        """Forward the text prefix once into ``kv_cache`` (every condition row)."""
        if kv_cache.length:
            raise RuntimeError("the text prefix must be the first entry of the KV cache")
        visible, kv_cache.visible = kv_cache.visible, None
        try:
            self.transformer(
                text_features=state.text_features, text_lengths=state.text_lengths, null_text=state.null_text,
                kv_cache=kv_cache, store_kv=True, head="none",
                attn_mask=state.text_key_mask(None, state.prefix_tokens),
            )
        finally:
            kv_cache.visible = visible

    def _clip_codes(self, state: InfinityStarState, step: StarStep) -> torch.Tensor:
        while len(state.summed) <= step.clip:
            grid = state.plan.clip_grid(len(state.summed))
            state.summed.append(torch.zeros(state.batch_size, self.vae.codebook_dim, *grid,
                                            device=state.device, dtype=state.dtype))
        return state.summed[step.clip]

    def positions(self, state: InfinityStarState, step: StarStep) -> torch.Tensor:
        """``(t*h*w, 4)`` RoPE coordinates of a step's sites (star positions on the final grid)."""
        t, h, w = step.grid
        _, big_h, big_w = state.plan.schedule[-1]
        device = state.device
        rows = (torch.arange(h) * (big_h / h)).round().long().to(device)
        cols = (torch.arange(w) * (big_w / w)).round().long().to(device)
        frames = torch.arange(t, device=device) + step.frame_start
        grid = torch.stack(torch.meshgrid(frames, rows, cols, indexing="ij"), dim=-1).reshape(-1, 3)
        scale = torch.full((grid.shape[0], 1), state.text_maxlen + step.real_sid, device=device, dtype=torch.long)
        return torch.cat([scale, grid], dim=1)

    def step_input(self, state: InfinityStarState, step: ScaleStep) -> StepInput:
        s = state.plan.steps[step.index]
        summed = self._clip_codes(state, s)
        content = summed if tuple(s.grid) == tuple(summed.shape[2:]) else F.interpolate(summed, size=s.grid,
                                                                                          mode="area")
        content = content.flatten(2).transpose(1, 2)  # (B, t*h*w, 64), sites in (t, h, w) order
        return StepInput(content, state.pack_positions(self.positions(state, s)))

    def _visibility(
        self, state: InfinityStarState, steps: list[StarStep], cached: int, sizes: list[int]
    ) -> tuple[list[tuple[int, int]], torch.Tensor | None]:
        """Cache ranges the call attends to and, for several steps, the additive mask over them."""
        in_cache = {}
        for s in steps:
            for ref in s.ref_sids:
                rng = state.cache_ranges.get(ref)
                if rng is not None and rng[1] <= cached:
                    in_cache[ref] = rng
                elif not any(o.scale == ref and o.store_kv for o in steps):
                    raise RuntimeError(
                        f"scale {s.scale} refers to scale {ref}, which is neither cached nor in the call"
                    )
        refs = sorted(in_cache, key=lambda r: in_cache[r][0])
        ranges = [(0, state.prefix_tokens)] + [in_cache[r] for r in refs]
        if len(steps) == 1:
            return ranges, None
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        allowed_rows = []
        for i, s in enumerate(steps):
            cols = [torch.ones(state.prefix_tokens, dtype=torch.bool)]
            for r in refs:
                a, b = in_cache[r]
                cols.append(torch.full((b - a,), r in s.ref_sids))
            new = torch.zeros(len(steps), dtype=torch.bool)
            for j, o in enumerate(steps):
                new[j] = j == i or (o.store_kv and o.scale in s.ref_sids and j < i)
            allowed_rows.append(torch.cat(cols + [new[owner]]))
        allowed = torch.stack(allowed_rows)[owner]  # (N, visible + N)
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        mask.masked_fill_(~allowed, float("-inf"))
        return ranges, mask.to(state.device)

    def forward(
        self,
        state: InfinityStarState,
        batch: RowBatch,
        kv_cache: KVCache,
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
    ) -> torch.Tensor:
        """Logits ``(R, N or last_tokens, 2 d)``, already multiplied by ``1 / tau`` of their scale.

        Several steps in one call: each step sees the text, its ``ref_sids`` (cached or earlier in the
        call) and itself. Without a ``hidden_hook`` they run as consecutive single-step calls (exact,
        and no dense mask: a replay of the 720p video scales would need one of tens of GB); with a
        hook (whose per-token data spans the whole call) they run as one call with an additive mask.
        """
        steps = [state.plan.steps[s.index] for s in batch.steps]
        sizes = [s.num_sites for s in steps]
        total = sum(sizes)
        if batch.content is None or batch.content.shape[1] != total:
            raise ValueError(f"the batch must carry content for {total} sites")
        returned = total if last_tokens is None else min(last_tokens, total)
        tail, covered = [], 0
        for s in reversed(steps):
            if covered >= returned:
                break
            tail.append(s)
            covered += s.num_sites
        if len({s.semantic_head for s in tail}) > 1:
            raise ValueError("the returned tokens span semantic and detail scales; ask for fewer `last_tokens`")
        head = "semantic" if tail[0].semantic_head else "detail"
        content = batch.content.to(state.dtype)
        coords = state.unpack_positions(batch.position_ids.to(state.device))
        if batch.token_plan is not None and len(steps) > 1:
            raise ValueError("a stream plan acts on one step's call; the batch holds several steps")
        if len(steps) == 1 or hidden_hook is not None:
            store = all(s.store_kv for s in steps)
            logits = self._call(state, steps, content, coords, kv_cache, store, head, hidden_hook, last_tokens,
                                batch.cond_index, batch.token_plan)
            return self._apply_tau(logits, steps)
        outs, start = [], 0
        for s in steps:
            end = start + s.num_sites
            keep = max(0, min(s.num_sites, returned - (total - end)))
            # stored steps stay in the cache (later steps of the call may refer to them; the layout of
            # the cache is the same as after separate calls)
            logits = self._call(state, [s], content[:, start:end], coords[:, start:end], kv_cache, s.store_kv,
                                head if keep else "none", None, keep or 1, batch.cond_index)
            if keep:
                outs.append(self._apply_tau(logits, [s]))
            start = end
        return torch.cat(outs, dim=1)

    def _call(self, state, steps, content, coords, kv_cache, store, head, hook, last_tokens, cond_index, plan=None):
        ranges, mask = self._visibility(state, steps, kv_cache.length, [s.num_sites for s in steps])
        keys = sum(b - a for a, b in ranges) + content.shape[1]
        text_mask = state.text_key_mask(cond_index, keys)
        if text_mask is not None:
            mask = text_mask if mask is None else text_mask + mask.to(text_mask)
        previous, kv_cache.visible = kv_cache.visible, ranges
        try:
            return self.transformer(
                inputs=content, position_ids=coords, kv_cache=kv_cache, store_kv=store, attn_mask=mask,
                head=head, hidden_hook=hook, last_tokens=last_tokens, stream_plan=plan,
            )
        finally:
            kv_cache.visible = previous

    @staticmethod
    def _apply_tau(logits: torch.Tensor, steps: list[StarStep]) -> torch.Tensor:
        """``logits * (1 / tau)`` per token (the official multiplies by the reciprocal)."""
        inv_tau = torch.cat([torch.full((s.num_sites,), 1 / s.tau) for s in steps])[-logits.shape[1] :]
        if bool((inv_tau == inv_tau[0]).all()):
            return logits.mul(float(inv_tau[0]))
        return logits * inv_tau.to(logits.device)[:, None]

    def random_content(self, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Contents of random detail-codebook entries ``(count, 64)``: ``(2 b - 1) / 8``."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        bits = torch.randint(0, 2, (count, self.vae.codebook_dim), generator=generator, device=gen_device)
        return F.normalize(bits.float() * 2 - 1, dim=-1).to(device)

    def sample(self, state: InfinityStarState, logits: torch.Tensor, step: ScaleStep, generator) -> torch.Tensor:
        """Bits ``(B, t, h, w, d)``: one multinomial draw over two classes per bit (or the forced codes)."""
        s = state.plan.steps[step.index]
        batch, n, vocab = logits.shape
        labels = self.transformer.config.num_of_label_value
        probs = logits.float().reshape(batch, n * vocab // labels, labels).softmax(dim=-1)
        bits = multinomial_rows(probs, generator).view(batch, *s.grid, vocab // labels)
        if step.index < len(state.forced_bits):
            bits = state.forced_bits[step.index].to(bits.device)  # drawn anyway: the official RNG stream
        return bits

    def update(self, state: InfinityStarState, codes: torch.Tensor, step: ScaleStep) -> None:
        """Add the step's codes, lifted to the clip's grid, to the clip's summed codes."""
        s = state.plan.steps[step.index]
        summed = self._clip_codes(state, s)
        lifted = self.vae.codes_from_bits(codes.to(summed.device), s.target, semantic=not s.detail_codebook)
        state.summed[s.clip] = summed + lifted.to(summed.dtype)

    def latents(self, state: InfinityStarState) -> torch.Tensor:
        """The concatenated summed codes ``(B, 64, T, H, W)`` of all clips (what the VAE decodes)."""
        return torch.cat(state.summed, dim=2)

    def decode(self, state: InfinityStarState) -> torch.Tensor:
        """Video ``(B, 3, frames, H, W)``, unclamped (~[-1, 1])."""
        return self.vae.decode(self.latents(state))
