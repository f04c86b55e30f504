"""The guidance chain of one pipeline call, shared by the three pipelines.

A call builds its terms from keyword arguments in the style of diffusers' PAG pipelines
(``guidance_scale``, ``vpg_*``, ``igg_scale``, ``ssg_scale``, ``entropy_temperature*``), plus an
advanced ``guiders=[...]`` list. After every step :meth:`CallGuidance.sync` re-reads the pipeline's
strength properties (``pipe._guidance_scale``, ``pipe._vpg_scale``, ``pipe._igg_scale``,
``pipe._ssg_scale``, ``pipe._entropy_temperature``), so a ``callback_on_step_end`` that sets one takes
effect from the next step — as diffusers' pipelines re-read ``self.guidance_scale`` every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..guidance.apg import AdaptiveProjectedGuidance
from ..guidance.base import MAX_STRENGTH, GuidanceTerm, strength_ok
from ..guidance.cfg import ClassifierFreeGuidance
from ..guidance.chain import GuidanceChain
from ..guidance.igg import InformationGroundingGuidance
from ..guidance.prefix import PrefixGuidance
from ..guidance.ssg import ScaledSpatialGuidance
from ..guidance.temperature import EntropyAwareTemperature
from .checks import check_number

_SLOTS = {
    ClassifierFreeGuidance: "condition", AdaptiveProjectedGuidance: "condition", PrefixGuidance: "prefix",
    InformationGroundingGuidance: "igg", ScaledSpatialGuidance: "ssg", EntropyAwareTemperature: "temperature",
}


def check_guidance_args(igg_scale: Any, ssg_scale: Any, entropy_temperature: Any, entropy_temperature_t0: Any,
                        entropy_temperature_alpha: Any, entropy_temperature_theta: Any, guiders: Any) -> None:
    """The arguments of the terms beyond CFG and VPG; each error names its argument."""
    if igg_scale is not None:
        check_number("igg_scale", igg_scale, low=0.0, high=MAX_STRENGTH)
    check_number("ssg_scale", ssg_scale, low=0.0, high=MAX_STRENGTH)
    if not isinstance(entropy_temperature, bool):
        raise ValueError(f"`entropy_temperature` must be a bool, got {entropy_temperature!r}")
    check_number("entropy_temperature_t0", entropy_temperature_t0, low=0.0)
    check_number("entropy_temperature_alpha", entropy_temperature_alpha, low=0.0, exclusive=True)
    check_number("entropy_temperature_theta", entropy_temperature_theta, low=0.0)
    if entropy_temperature_t0 + entropy_temperature_theta <= 0:
        raise ValueError("`entropy_temperature_t0 + entropy_temperature_theta` must be > 0 (the temperature would "
                         "be 0)")
    if guiders is not None:
        if not isinstance(guiders, (list, tuple)):
            raise ValueError(f"`guiders` must be a list of guidance terms, got {type(guiders).__name__}")
        for i, g in enumerate(guiders):
            if not isinstance(g, GuidanceTerm):
                raise ValueError(f"`guiders[{i}]` must be a guidance term from vpg_pipelines.guidance "
                                 f"(ClassifierFreeGuidance, InformationGroundingGuidance, ...), got {type(g).__name__}")


class CallGuidance:
    """The terms of one call: built from the keyword arguments, steered by the pipeline's properties.

    A term given in ``guiders`` takes the place of the one the pipeline would build for the same job
    (CFG / APG, VPG, IGG, SSG, temperature); the pipeline's properties steer only the terms it built.
    SSG and the temperature are always built (off: ``ssg_scale=0``, ``entropy_temperature=False``) so a
    callback can switch them on; IGG is built disabled when ``igg_scale=None`` (unless the condition
    term mixes at a hidden layer, where IGG is not defined). With IGG on and CFG off for the whole call
    (``guidance_scale`` at its off value: VAR 0, Infinity / InfinityStar 1), CFG's weight is unset and
    IGG replaces it (``l_u + t·G``, the paper's code with ``w_cfg=None``).

    Args:
        step_scales: the scale of every sampler step of the call (decides whether CFG is ever on).
    """

    def __init__(self, condition: GuidanceTerm | None, prefix: PrefixGuidance | None, igg_scale: float | None,
                 ssg_scale: float, entropy_temperature: bool, entropy_temperature_t0: float,
                 entropy_temperature_alpha: float, entropy_temperature_theta: float,
                 guiders: Sequence[GuidanceTerm] | None = None, step_scales: Sequence[int] = ()) -> None:
        given = list(guiders or [])
        taken = {_SLOTS.get(type(g)) for g in given}
        own: dict[str, GuidanceTerm] = {}
        igg_on = igg_scale is not None or any(isinstance(g, InformationGroundingGuidance) and g.enabled
                                              for g in given)
        scales = list(step_scales)
        self._unset_condition = None
        if condition is not None and "condition" not in taken:
            if igg_on and scales and not condition.uses_rows(scales, max(scales) + 1):
                self._unset_condition = condition.guidance_scale  # IGG replaces the unset CFG
            else:
                own["condition"] = condition
        if prefix is not None and "prefix" not in taken:
            own["prefix"] = prefix
        hidden = getattr(own.get("condition"), "layer", 0) != 0
        if "igg" not in taken and (igg_scale is not None or not hidden):
            igg = InformationGroundingGuidance(guidance_scale=float(igg_scale or 0.0))
            if igg_scale is None:
                igg.disable()
            own["igg"] = igg
        if "ssg" not in taken:
            own["ssg"] = ScaledSpatialGuidance(guidance_scale=float(ssg_scale))
        if "temperature" not in taken:
            temperature = EntropyAwareTemperature(t0=float(entropy_temperature_t0),
                                                  alpha=float(entropy_temperature_alpha),
                                                  theta=float(entropy_temperature_theta))
            if not entropy_temperature:
                temperature.disable()
            own["temperature"] = temperature
        self.own = own
        self.chain = GuidanceChain([*own.values(), *given])
        prefix_term = own.get("prefix")
        self._prefix_rows = prefix_term is not None and not prefix_term.is_noop

    @property
    def terms(self) -> list[GuidanceTerm]:
        return self.chain.terms

    def sync(self, pipe: Any) -> None:
        """Copy the pipeline's strength properties into the terms it built (after each step's callback)."""
        condition = self.own.get("condition")
        if self._unset_condition is not None and pipe._guidance_scale != self._unset_condition:
            raise ValueError("`guidance_scale` was switched on during sampling, but this call started with CFG off "
                             "and IGG in its place; start the call with CFG on")
        if condition is not None:
            value = pipe._guidance_scale
            per_scale = isinstance(value, (list, tuple))
            values = value if per_scale else [value]
            if not values or not all(strength_ok(v) for v in values):
                raise ValueError(f"`guidance_scale` set during sampling must be a number in [0, {MAX_STRENGTH:g}], "
                                 f"got {value!r}")
            condition.guidance_scale = [float(v) for v in values] if per_scale else float(value)
        prefix = self.own.get("prefix")
        if prefix is not None:
            w = pipe._vpg_scale
            if not strength_ok(w):
                raise ValueError(f"`vpg_scale` set during sampling must be a number in [0, {MAX_STRENGTH:g}], "
                                 f"got {w!r}")
            if not self._prefix_rows and float(w) != 1.0 and prefix.corruption > 0:
                raise ValueError("`vpg_scale` was switched on during sampling, but this call started with VPG off and "
                                 "built no corrupted rows; start the call with vpg_scale != 1")
            prefix.guidance_scale = float(w)
        igg = self.own.get("igg")
        if igg is not None:
            value = pipe._igg_scale
            if value is None:
                igg.disable()
            else:
                if not strength_ok(value):
                    raise ValueError(f"`igg_scale` set during sampling must be None or a number in "
                                     f"[0, {MAX_STRENGTH:g}], got {value!r}")
                igg.guidance_scale = float(value)
                igg.enable()
        elif pipe._igg_scale is not None and not any(isinstance(t, InformationGroundingGuidance) for t in self.terms):
            raise ValueError("`igg_scale` was set during sampling, but IGG is not defined for this call (CFG mixes "
                             "at a hidden layer: cfg_insertion_layer != 0)")
        ssg = self.own.get("ssg")
        if ssg is not None:
            value = pipe._ssg_scale
            if not strength_ok(value):
                raise ValueError(f"`ssg_scale` set during sampling must be a number in [0, {MAX_STRENGTH:g}], "
                                 f"got {value!r}")
            ssg.guidance_scale = float(value)
        temperature = self.own.get("temperature")
        if temperature is not None:
            if not isinstance(pipe._entropy_temperature, bool):
                raise ValueError(f"`entropy_temperature` set during sampling must be a bool, got "
                                 f"{pipe._entropy_temperature!r}")
            temperature.enable() if pipe._entropy_temperature else temperature.disable()


class GuidanceStrengthsMixin:
    """The strengths a ``callback_on_step_end`` may change, as pipeline properties (like ``guidance_scale``).

    Set the underscored attribute in the callback (``pipe._ssg_scale = 0.8``); it takes effect from the
    next step. A term whose rows were not built at the start of the call (CFG / VPG off) cannot be
    switched on during it: the call raises a ``ValueError`` that names the argument.
    """

    _vpg_scale: float = 1.0
    _igg_scale: float | None = None
    _ssg_scale: float = 0.0
    _entropy_temperature: bool = False

    @property
    def vpg_scale(self) -> float:
        """VPG's ``w`` of the current (or latest) call."""
        return self._vpg_scale

    @property
    def igg_scale(self) -> float | None:
        """IGG's ``w`` (``None``: off)."""
        return self._igg_scale

    @property
    def ssg_scale(self) -> float:
        """SSG's ``beta`` (0: off)."""
        return self._ssg_scale

    @property
    def entropy_temperature(self) -> bool:
        """Whether the entropy-aware temperature is on."""
        return self._entropy_temperature

    def _start_guidance(self, guidance: CallGuidance, igg_scale: float | None, ssg_scale: float,
                        entropy_temperature: bool) -> None:
        """Set the strength properties at the start of a call."""
        prefix = guidance.own.get("prefix")
        self._vpg_scale = float(prefix.guidance_scale) if prefix is not None else 1.0
        self._igg_scale = None if igg_scale is None else float(igg_scale)
        self._ssg_scale = float(ssg_scale)
        self._entropy_temperature = bool(entropy_temperature)
