"""Scaled Spatial Guidance (SSG) on the guided logits.

Reference:
    Youngwoo Shin, Jiwan Hur and Junmo Kim, "SSG: Scaled Spatial Guidance for Multi-Scale Visual
    Autoregressive Generation", ICLR 2026; arXiv:2602.05534 (2026), https://arxiv.org/abs/2602.05534.

At step ``k`` the logits move away from a *prior* built from the previous scale's logits:

    l_k  <-  l_k + beta_k · (l_k − l_prior)

``l_prior`` is the previous scale's logits brought to the current grid by **Discrete Spatial
Enhancement** (DSE): interpolate the old logits to the new grid, take the DCT of the old-grid logits
and of the interpolated ones, keep the low-frequency block (the old grid's size) from the former and
the rest from the latter, and invert the DCT. SSG needs no extra forward pass; it reads what it was
given at earlier steps (its run memory), so it ``needs`` the previous logits.

The authors' code is not public. Where the paper leaves a detail open, this file decides (and
``docs/guidance.md`` lists the decisions):

- **which logits**: SSG's own input, i.e. the logits after every term before it in the chain (CFG,
  IGG, VPG), at the last step of the previous scale; its output is what the next terms see;
- **interpolation**: ``"linear"`` (bilinear / trilinear, ``align_corners=False``) by default — the DCT
  block replaces its low frequencies anyway, and a linear kernel adds no overshoot to the rest;
  ``"nearest"`` is the other choice;
- **DCT normalisation**: the orthonormal DCT-II over every grid axis; the old grid's coefficients are
  multiplied by ``sqrt(new sites / old sites)`` before they replace the low block, so a constant field
  stays the same constant (an orthonormal DCT's DC coefficient grows with the square root of the size);
- **beta schedule**: one value for every step (``guidance_scale``), or one per scale (a list); ``start`` / ``stop``
  restrict it; the first scale has no prior and is never changed;
- **bitwise logits** (Infinity ``(n, d, 2)``, InfinityStar ``(n, 2d)``): every logit channel is treated
  alike — the update is linear, so this equals guiding each bit's log-odds;
- **repeated scales** (InfinityStar): the prior is the last step of the previous *scale* (the final
  repetition), so every repetition of scale ``k`` uses the same prior;
- **video**: the DCT runs over (t, h, w); a step whose previous scale belongs to another clip, has a
  larger grid in any axis, or has another logit shape (InfinityStar's detail codebook) is left
  unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config

from ..devices import compute_in_float64
from .base import (
    NEEDS_PREVIOUS,
    GuidanceStep,
    GuidanceTerm,
    accepts_renamed_keywords,
    check_strength,
    per_scale_value,
)

INTERPOLATIONS = ("linear", "nearest")


def dct_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` (``n x n``) in ``dtype`` on ``device``: ``X = C @ x``, ``x = C.T @ X``.

    Built in ``dtype`` on the CPU (float64 when asked: the host's), then moved."""
    i = torch.arange(n, dtype=dtype)
    k = i[:, None]
    mat = torch.cos(math.pi * (i[None, :] + 0.5) * k / n) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat.to(device=device)


def _transform(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The separable orthonormal DCT (or its inverse) over every axis of ``x`` after the first two
    (``x`` is ``(B, channels, *grid)``)."""
    for axis in range(2, x.dim()):
        mat = dct_matrix(x.shape[axis], x.device, x.dtype)
        moved = x.movedim(axis, -1)
        x = (moved @ mat if inverse else moved @ mat.T).movedim(-1, axis)
    return x


def discrete_spatial_enhancement(previous: torch.Tensor, new_grid: Sequence[int],
                                 interpolation: str = "linear") -> torch.Tensor:
    """Bring ``previous`` ``(B, channels, *old_grid)`` to ``new_grid`` (each axis >= the old one): the
    interpolation's DCT with its low-frequency block replaced by the old grid's (rescaled) DCT.

    Computed in float64: on ``previous``'s device where it has float64, on the CPU where it has none
    (:func:`~vpg_pipelines.devices.compute_in_float64`); returned in ``previous``'s dtype and device."""
    old_grid = tuple(previous.shape[2:])
    new_grid = tuple(int(g) for g in new_grid)
    if len(old_grid) != len(new_grid) or any(o > n for o, n in zip(old_grid, new_grid)):
        raise ValueError(f"DSE goes from a coarser to a finer grid, got {old_grid} -> {new_grid}")
    return compute_in_float64(lambda x: enhance(x, new_grid, interpolation), previous)


def enhance(x: torch.Tensor, new_grid: tuple[int, ...], interpolation: str = "linear") -> torch.Tensor:
    """DSE in ``x``'s dtype on its device (:func:`discrete_spatial_enhancement` checks the grids and picks
    float64)."""
    old_grid = tuple(x.shape[2:])
    if interpolation == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(new_grid)]
        up = F.interpolate(x, size=new_grid, mode=mode, align_corners=False)
    else:
        up = F.interpolate(x, size=new_grid, mode="nearest")
    spectrum = _transform(up)
    low = _transform(x) * math.sqrt(math.prod(new_grid) / math.prod(old_grid))
    spectrum[(slice(None), slice(None), *(slice(0, o) for o in old_grid))] = low
    return _transform(spectrum, inverse=True)


class ScaledSpatialGuidance(GuidanceTerm):
    """SSG on the guided logits.

    Args:
        guidance_scale (`float` or `list[float]`, defaults to 0.5): ``beta`` (``ssg_scale``), >= 0, or
            one value per scale; 0 changes nothing. ``scale=`` is its deprecated name (accepted with a
            ``FutureWarning`` until 0.2.0).
        interpolation (`str`, defaults to `"linear"`): ``"linear"`` or ``"nearest"``: the kernel DSE
            interpolates with.
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`.

    ``guidance_scale`` may be changed between steps (the pipelines do so for ``pipe._ssg_scale``).
    """

    needs = NEEDS_PREVIOUS
    display_name = "SSG"

    @accepts_renamed_keywords
    @register_to_config
    def __init__(
        self,
        guidance_scale: float | Sequence[float] = 0.5,
        interpolation: str = "linear",
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        check_strength("ssg_scale", guidance_scale)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.guidance_scale = guidance_scale
        self.interpolation = interpolation

    def describe(self) -> str:
        if isinstance(self.guidance_scale, (int, float)):
            return f"SSG {self.guidance_scale:g}"
        return "SSG (per scale)"

    def beta(self, step: GuidanceStep) -> float:
        """``beta_k`` at this step (0 when off)."""
        if not self.is_on(step):
            return 0.0
        return per_scale_value("ssg_scale", self.guidance_scale, step.step.scale, step.num_scales)

    def reduce(self, logits: torch.Tensor, step: GuidanceStep) -> torch.Tensor:
        memory = step.memory(self)
        latest = memory.get("latest")
        if latest is not None and latest[0].scale != step.step.scale:
            memory["prior"] = latest
        memory["latest"] = (step.step, logits)
        beta = self.beta(step)
        if beta == 0.0:  # off at this step: only the memory is kept (a later step may switch it on)
            return logits
        prior = self.prior(memory.get("prior"), step, logits)
        if prior is None:
            return logits
        return logits + beta * (logits - prior)

    def prior(self, entry: tuple | None, step: GuidanceStep, logits: torch.Tensor) -> torch.Tensor | None:
        """``l_prior`` for this step, or ``None`` where SSG is not defined (see the module docstring)."""
        if entry is None:
            return None
        old_step, old = entry
        grid, old_grid = tuple(step.step.grid), tuple(old_step.grid)
        same_clip = old_step.extra.get("clip") == step.step.extra.get("clip")
        usable = (
            old_step.scale < step.step.scale and same_clip and len(grid) == len(old_grid)
            and all(o <= n for o, n in zip(old_grid, grid))
            and old.shape[0] == logits.shape[0] and old.shape[2:] == logits.shape[2:]
            and old.shape[1] == math.prod(old_grid) and logits.shape[1] == math.prod(grid)
        )
        if not usable:
            return None
        batch, channels = old.shape[0], math.prod(old.shape[2:])
        field = old.reshape(batch, *old_grid, channels).movedim(-1, 1)
        prior = discrete_spatial_enhancement(field, grid, self.interpolation)
        return prior.movedim(1, -1).reshape(logits.shape).to(logits.dtype)
