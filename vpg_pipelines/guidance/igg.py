"""Information-Grounding Guidance (IGG) on the condition axis.

Reference:
    Ky Dan Nguyen, Hoang Lam Tran, Anh-Dung Dinh, Daochang Liu, Weidong Cai, Xiuying Wang and Chang Xu,
    "Not All Tokens are Guided Equal: Improving Guidance in Visual Autoregressive Models",
    arXiv:2509.23876 (2025), https://arxiv.org/abs/2509.23876; code
    ``github.com/dnngky/infoground-guidance``.

With the condition contrast ``d = l_c − l_u`` over the sites of the current scale (one feature vector
of ``V`` logits per site), IGG attends over the sites with ``d`` itself:

    G = softmax(d dᵀ / sqrt(V)) d                    (per sample, over the scale's n sites)
    l = l_u + t_cfg · d + t_igg · G,    t = 1 + r_k · w,   r_k = k / (K − 1)

(the public code, ``models/var.py``, ramps both weights like VAR's CFG). In the chain IGG is a
condition term that reads the same rows as CFG: after CFG (or APG) it adds ``t_igg · G`` to their
result; with no other condition term in the chain (CFG's weight unset), ``l = l_u + t_igg · G`` —
IGG replaces CFG, as in the public code. Note that ``w = 0`` still gives ``t = 1``: IGG is switched off
by leaving it out (``igg_scale=None``) or with ``enabled=False``, not by a zero strength (``w`` is the
term's ``guidance_scale``, the pipelines' ``igg_scale``).

Decisions where the paper is silent (``docs/guidance.md``):

- **features**: all logits of a site, flattened (Infinity's ``d`` bits × 2 labels, InfinityStar's
  flat pairs), so ``V`` is that count;
- **ramp**: ``k`` is the step's scale index and ``K`` the run's number of scales (repetitions of a
  scale share its ``r_k``; InfinityStar's scales count on across clips); ``schedule="constant"`` gives
  ``t = 1 + w`` at every scale;
- **memory**: the ``n × n`` attention is computed in chunks of query sites so that the scores of one
  chunk stay under ``max_scores`` elements (cost ``O(n² V)`` per scale: a 720p video clip has
  n = 72 000 sites; 1024² Infinity 4 096);
- **not defined** where the conditional and null logits coincide: with CFG mixed at a hidden layer
  (Infinity's ``cfg_insertion_layer != 0``) the chain refuses IGG; every model here has a null
  condition (VAR's null class, Infinity's and InfinityStar's null text), so IGG runs on all three.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config

from .base import NEEDS_CONDITIONS, GuidanceStep, GuidanceTerm, accepts_renamed_keywords, check_strength

SCHEDULES = ("linear", "constant")
DEFAULT_MAX_SCORES = 1 << 24
"""Attention scores per chunk (64 MiB in float32)."""


def grounding(diff: torch.Tensor, site_axis: int = 2, max_scores: int = DEFAULT_MAX_SCORES) -> torch.Tensor:
    """``softmax(d dᵀ / sqrt(V)) d`` over the sites (axis ``site_axis``) of ``diff``; the axes before it are
    independent samples, the axes after it one site's ``V`` features. Computed in chunks of query sites
    whose scores hold at most ``max_scores`` elements."""
    lead, n, tail = diff.shape[:site_axis], diff.shape[site_axis], diff.shape[site_axis + 1:]
    features = math.prod(tail)
    d = diff.reshape(-1, n, features)
    rows = max(1, min(n, max_scores // max(1, d.shape[0] * n)))
    inv_sqrt_features = 1.0 / math.sqrt(features)
    keys = d.transpose(1, 2)
    out = torch.empty_like(d)
    for i in range(0, n, rows):
        scores = (d[:, i : i + rows] @ keys) * inv_sqrt_features
        out[:, i : i + rows] = scores.softmax(dim=-1) @ d
    return out.reshape(*lead, n, *tail)


class InformationGroundingGuidance(GuidanceTerm):
    """IGG on the condition axis.

    Args:
        guidance_scale (`float`, defaults to 0.0): ``w`` (``igg_scale``), >= 0: ``t_igg = 1 + r_k · w``.
            ``scale=`` is its deprecated name (accepted with a ``FutureWarning`` until 0.2.0).
        schedule (`str`, defaults to `"linear"`): ``"linear"`` (the paper's ramp, ``r_k = k / (K − 1)``)
            or ``"constant"`` (``r_k = 1``).
        max_scores (`int`, defaults to 2**24): attention scores per chunk (memory bound of the
            ``n × n`` attention).
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`; outside the range
            IGG adds nothing (alone in the chain it then leaves the conditional logits).

    ``guidance_scale`` may be changed between steps (the pipelines do so for ``pipe._igg_scale``).
    """

    needs = NEEDS_CONDITIONS
    display_name = "IGG"
    reads_condition_logits = True

    @accepts_renamed_keywords
    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 0.0,
        schedule: str = "linear",
        max_scores: int = DEFAULT_MAX_SCORES,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        check_strength("igg_scale", guidance_scale, allow_list=False)
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}")
        if isinstance(max_scores, bool) or not isinstance(max_scores, int) or max_scores < 1:
            raise ValueError(f"`max_scores` must be an integer >= 1, got {max_scores!r}")
        self.guidance_scale = guidance_scale
        self.schedule = schedule
        self.max_scores = max_scores

    def describe(self) -> str:
        return f"IGG {self.guidance_scale:g}"

    def weight(self, step: GuidanceStep) -> float:
        """``t_igg = 1 + r_k · w`` at this step."""
        ratio = step.step.scale / max(step.num_scales - 1, 1) if self.schedule == "linear" else 1.0
        return 1.0 + ratio * float(self.guidance_scale)

    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor | None:
        """``guided + t·G`` after another condition term, else ``u + t·G``; ``cond`` / ``uncond`` are
        ``(prefix branches, B, n, *V)``. Off, IGG contributes nothing: ``guided`` is passed on as it is."""
        if not self.is_on(step):
            return guided
        if uncond is None:
            raise ValueError("IGG: no null-condition rows were built for this call; IGG needs them (it was "
                             "switched on during sampling, or the model has no null condition)")
        ground = grounding(cond - uncond, site_axis=2, max_scores=self.max_scores)
        base = uncond if guided is None else guided
        return base + self.weight(step) * ground
