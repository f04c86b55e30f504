"""Entropy-aware temperature on the guided logits.

Reference:
    Xiaoxiao Ma, Feng Zhao, Pengyang Ling, Haibo Qiu, Zhixiang Wei, Hu Yu, Jie Huang, Zhixiong Zeng and
    Lin Ma, "Towards Better & Faster Autoregressive Image Generation: From the Perspective of Entropy",
    NeurIPS 2025; arXiv:2510.09012 (2025), https://arxiv.org/abs/2510.09012; code
    ``github.com/krennic999/ARsample``.

Per site, from the entropy ``H`` (in nats) of the guided distribution,

    T = T_base · (T0 · exp(−H / alpha) + theta),     logits <- logits / T

with the paper's constants ``T0 = 2.5``, ``alpha = 3``, ``theta = 0.6`` (their LlamaGen code,
``autoregressive/models/generate.py``): confident sites (low ``H``) are sampled hotter, uncertain ones
cooler. The constants are written once, in :data:`ENTROPY_TEMPERATURE_DEFAULTS`, which this term, the
pipelines' ``entropy_temperature_*`` arguments, the CLI and the ComfyUI node read. The term needs
nothing but the current logits; it belongs **after** every other guidance term (the pipelines put it
last), and the model's own filters (top-k / top-p) run after it.

Decisions (``docs/guidance.md``):

- **which distribution**: the full guided distribution the sampler is about to filter and draw from.
  The public code measures ``H`` after its top-k / top-p filter; here the filters belong to the model's
  sampler, which runs after the chain, so ``H`` is that of the unfiltered distribution;
- **bitwise logits** (Infinity, InfinityStar): a site's token is its ``d`` bits, drawn independently, so
  its entropy is the **sum** of the bits' entropies (the entropy of the site's joint distribution) and
  one ``T`` scales all of the site's bit logits. The paper's constants were tuned on LlamaGen's
  16 384-entry codebook (``H`` up to 9.7 nats); a 32-bit site can reach 22 nats, a 4 096-entry VAR
  codebook 8.3: the constants are a starting point, not a tuned setting;
- Infinity's and InfinityStar's logits are already divided by the model's own ``tau``, so ``T_base``
  (``base``, default 1) multiplies on top of it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers.configuration_utils import register_to_config

from .base import NEEDS_NOTHING, GuidanceStep, GuidanceTerm, check_strength


class EntropyTemperatureConstants(NamedTuple):
    """The constants of ``T = T0 · exp(−H / alpha) + theta``."""

    t0: float
    alpha: float
    theta: float


ENTROPY_TEMPERATURE_DEFAULTS = EntropyTemperatureConstants(t0=2.5, alpha=3.0, theta=0.6)
"""The paper's constants (their public LlamaGen code); written here once, read everywhere."""


def site_entropy(logits: torch.Tensor, categories: int | None = None) -> torch.Tensor:
    """Entropy (nats) per site of ``logits`` ``(B, n, *V)`` -> ``(B, n)``.

    ``categories``: size of one categorical distribution in the last dimension (``None``: the whole
    last dimension); several distributions per site (bits) are independent and their entropies add.
    """
    batch, n = logits.shape[:2]
    flat = logits.float().reshape(batch, n, -1)
    k = flat.shape[-1] if categories is None else int(categories)
    if flat.shape[-1] % k:
        raise ValueError(f"the logits' last dimension ({flat.shape[-1]}) is not a multiple of {k} categories")
    groups = flat.reshape(batch, n, -1, k)
    logp = groups.log_softmax(dim=-1)
    # p·log p with p = 0 (a -inf logit) counts as 0
    plogp = torch.where(logp.isfinite(), logp.exp() * logp, torch.zeros_like(logp))
    return -plogp.sum(dim=(-1, -2))


class EntropyAwareTemperature(GuidanceTerm):
    """Per-site temperature from the entropy of the guided distribution.

    Args:
        base (`float`, defaults to 1.0): ``T_base`` (> 0), multiplied on top of the model's own
            temperature.
        t0 (`float`, defaults to 2.5): ``T0`` (>= 0).
        alpha (`float`, defaults to 3.0): ``alpha`` (> 0).
        theta (`float`, defaults to 0.6): ``theta`` (>= 0); ``t0 = 0, theta = 1`` is a plain constant
            temperature ``base`` (what the quality benchmark tunes the baseline with).
        start, stop, enabled: see :class:`~vpg_pipelines.guidance.base.GuidanceTerm`.
    """

    needs = NEEDS_NOTHING
    display_name = "entropy temperature"

    @register_to_config
    def __init__(
        self,
        base: float = 1.0,
        t0: float = ENTROPY_TEMPERATURE_DEFAULTS.t0,
        alpha: float = ENTROPY_TEMPERATURE_DEFAULTS.alpha,
        theta: float = ENTROPY_TEMPERATURE_DEFAULTS.theta,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        check_strength("entropy_temperature_base", base, allow_list=False)
        check_strength("entropy_temperature_t0", t0, allow_list=False)
        check_strength("entropy_temperature_alpha", alpha, allow_list=False)
        check_strength("entropy_temperature_theta", theta, allow_list=False)
        if not base > 0 or not alpha > 0:
            raise ValueError(f"`entropy_temperature_base` and `entropy_temperature_alpha` must be > 0, got base "
                             f"{base!r}, alpha {alpha!r}")
        if not t0 + theta > 0:
            raise ValueError("`entropy_temperature_t0 + entropy_temperature_theta` must be > 0 (T would be 0)")
        self.base, self.t0, self.alpha, self.theta = base, t0, alpha, theta

    def describe(self) -> str:
        return f"entropy temperature T0={self.t0:g} alpha={self.alpha:g} theta={self.theta:g}"

    def temperature(self, logits: torch.Tensor, categories: int | None = None) -> torch.Tensor:
        """``T`` per site ``(B, n)``."""
        entropy = site_entropy(logits, categories)
        return self.base * (self.t0 * torch.exp(-entropy / self.alpha) + self.theta)

    def reduce(self, logits: torch.Tensor, step: GuidanceStep) -> torch.Tensor:
        if not self.is_on(step):
            return logits
        t = self.temperature(logits, step.categories)
        return logits / t.reshape(*t.shape, *([1] * (logits.dim() - 2))).to(logits.dtype)
