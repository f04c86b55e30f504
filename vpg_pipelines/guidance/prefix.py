"""Visual Prefix Guidance (VPG) over the prefix axis: ``out = g~ + w * (g - g~)``.

Reference:
    Xinyao Liao, Qiyuan He, Yicong Li, Jiayin Zhu, Xiaoye Qu, Wei Wei and Angela Yao, "VPG: Visual Prefix
    Guidance for Autoregressive Image and Video Generation", arXiv:2605.30317 (2026),
    https://arxiv.org/abs/2605.30317. The authors' code is not public; this package is an implementation
    of the paper (``docs/vpg.md``).

``g`` is the (CFG-guided) prediction on the clean generated prefix, ``g~`` the same prediction on a
corrupted copy of that prefix (``corruption.py``); ``w`` is the term's ``guidance_scale`` (the
pipelines' ``vpg_scale``). See ``docs/vpg.md`` for every option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.configuration_utils import register_to_config

from .base import MAX_STRENGTH, NEEDS_PREFIX, GuidanceStep, GuidanceTerm, accepts_renamed_keywords, strength_ok
from .corruption import CorruptionPattern, Generators, apply_corruption, draw_pattern

MODES = ("full", "token", "position", "codebook")
REFRESH = ("persistent", "resample")
SCALE_PRESETS = ("all", "semantic")


class PrefixGuidance(GuidanceTerm):
    """VPG settings.

    Args:
        guidance_scale (`float`, defaults to 1.5): ``w`` (``vpg_scale``), >= 0. ``w = 1`` is plain
            sampling, ``w = 0`` the corrupted branch alone. ``scale=`` is its deprecated name (accepted
            with a ``FutureWarning`` until 0.2.0).
        corruption (`float`, defaults to 0.5): fraction ``p`` in [0, 1] of the sites of each prefix scale
            that take a donor's input (``floor(p * n)`` sites).
        mode (`str`, defaults to `"full"`): ``"full"`` (donor's content and position; the paper's
            method), ``"token"`` (content only), ``"position"`` (position only), ``"codebook"`` (a random
            codebook entry's content).
        refresh (`str`, defaults to `"persistent"`): ``"persistent"`` (each scale corrupted once, kept
            in the corrupted branch's KV cache) or ``"resample"`` (a fresh corruption of the whole
            prefix at every guided step, recomputed from scratch).
        scales (`str` or `list[int]`, defaults to `"all"`): the guided resolution levels: ``"all"``,
            ``"semantic"`` (the model's early scales) or a list of scale indices.
        always_compute (`bool`, defaults to `False`): run the corrupted branch even when it cannot
            change the result (``w == 1`` or ``p == 0``); for tests and measurements.
        corrupt_conditioning (`bool`, defaults to `False`): also corrupt the steps whose codes are given
            conditioning (InfinityStar's image-to-video image, a continued video; ``ScaleStep.conditioning``).
            ``False``: they are conditioning, like the text: both branches see them clean, their keys and
            values are shared, and they run no corrupted branch (``docs/vpg.md``, "Conditioned prefixes").
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; a step outside
            ``[start, stop)`` is not guided (no corrupted branch).

    ``guidance_scale`` may be changed between steps (the pipelines do so for ``pipe._vpg_scale``);
    which steps run a corrupted branch is fixed when sampling starts.
    """

    needs = NEEDS_PREFIX
    display_name = "VPG"

    @accepts_renamed_keywords
    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 1.5,
        corruption: float = 0.5,
        mode: str = "full",
        refresh: str = "persistent",
        scales: str | Sequence[int] = "all",
        always_compute: bool = False,
        corrupt_conditioning: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        if not strength_ok(guidance_scale):
            raise ValueError(f"`vpg_scale` must be a number in [0, {MAX_STRENGTH:g}], got {guidance_scale!r}")
        if isinstance(corruption, bool) or not isinstance(corruption, (int, float)) or not (
            0.0 <= corruption <= 1.0
        ):
            raise ValueError(f"`vpg_corruption` must be a number in [0, 1], got {corruption!r}")
        if mode not in MODES:
            raise ValueError(f"`vpg_mode` must be one of {MODES}, got {mode!r}")
        if refresh not in REFRESH:
            raise ValueError(f"`vpg_refresh` must be one of {REFRESH}, got {refresh!r}")
        scales_ok = scales in SCALE_PRESETS if isinstance(scales, str) else (
            isinstance(scales, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in scales)
        )
        if not scales_ok:
            raise ValueError(
                f"`vpg_scales` must be 'all', 'semantic' or a list of integer scale indices, got {scales!r}"
            )
        self.guidance_scale = guidance_scale
        self.corruption = corruption
        self.mode = mode
        self.refresh = refresh
        self.scales = scales
        if not isinstance(corrupt_conditioning, bool):
            raise ValueError(f"`vpg_corrupt_conditioning` must be a bool, got {corrupt_conditioning!r}")
        self.always_compute = always_compute
        self.corrupt_conditioning = corrupt_conditioning

    @property
    def is_noop(self) -> bool:
        """True when the corrupted branch cannot change the output (and is therefore skipped)."""
        if not self.enabled:
            return True
        return not self.always_compute and (self.guidance_scale == 1.0 or self.corruption == 0.0)

    def describe(self) -> str:
        return f"VPG w={self.guidance_scale:g} p={self.corruption:g}"

    @property
    def uses_random_content(self) -> bool:
        """The ``codebook`` mode draws random codebook contents (the sampler supplies them)."""
        return self.mode == "codebook"

    def guided_scales(self, num_scales: int, semantic: set[int]) -> set[int]:
        """Scale indices this guidance applies to (validated against ``num_scales``).

        ``semantic`` is the model's set of early ("semantic") scale indices.
        """
        if self.scales == "all":
            return set(range(num_scales))
        if self.scales == "semantic":
            return set(semantic)
        bad = [s for s in self.scales if not 0 <= s < num_scales]
        if bad:
            raise ValueError(f"`vpg_scales` entries must be in [0, {num_scales - 1}] for this model, got {bad}")
        return set(self.scales)

    def guided_steps(self, steps: Sequence, num_scales: int) -> set[int]:
        """Indices of the sampler steps that run a corrupted branch (none when :attr:`is_noop`)."""
        if self.is_noop:
            return set()
        scales = self.guided_scales(num_scales, {s.scale for s in steps if s.semantic})
        n = len(steps)
        return {s.index for s in steps if s.corruptible and s.scale in scales and self.in_range(s.index, n)
                and (self.corrupt_conditioning or not s.conditioning)}

    def shared_steps(self, steps: Sequence) -> int:
        """How many leading steps the corrupted branch shares with the clean one (their keys / values are
        copied, never recomputed corrupted): the single-site first step, and the conditioning steps unless
        :attr:`corrupt_conditioning`."""
        shared = 0
        if not self.corrupt_conditioning:
            while shared < len(steps) and steps[shared].conditioning:
                shared += 1
        return max(1, shared)

    # -- the corrupted branch (the sampler builds its rows with these) ---------------------------------
    def draw(self, batch: int, num_sites: int, generator: Generators,
             random_content: Callable[[int, torch.Generator | None], torch.Tensor] | None = None) -> CorruptionPattern:
        """One scale's corruption for every sample, from the caller's generator(s)."""
        return draw_pattern(batch, num_sites, self.corruption, generator, random_content)

    def corrupt(self, content: torch.Tensor, position_ids: torch.Tensor,
                pattern: CorruptionPattern) -> tuple[torch.Tensor, torch.Tensor]:
        """The corrupted ``(content, position_ids)`` of one scale."""
        return apply_corruption(content, position_ids, pattern, self.mode)

    # -- the reduction ----------------------------------------------------------------------------------
    def combine(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """``corrupted + w * (clean - corrupted)``."""
        return corrupted + (clean - corrupted) * self.guidance_scale

    def reduce_prefix(self, clean: torch.Tensor, corrupted: torch.Tensor | None, step: GuidanceStep) -> torch.Tensor:
        if corrupted is None:
            return clean
        return self.combine(clean, corrupted)
