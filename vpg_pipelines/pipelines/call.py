"""One pipeline call, resolved: what ``pipe.resolve_call(**call_kwargs)`` returns and ``pipe(...)`` runs.

A pipeline turns the arguments of a call into a :class:`ResolvedCall` in one place: the defaults of its
``__call__`` signature (and the model's own settings where the signature says ``None``) applied, every
argument checked (``check_inputs``, the VPG settings, the other guidance arguments), the schedule of
steps and the guidance chain built. ``__call__`` starts with it; the memory planner
(``pipe.estimate_memory``) and the ComfyUI nodes read the same object instead of re-deriving the call.
The call's accelerator (``acceleration=``, a preset name or a config object) is resolved and checked here
too (:func:`call_acceleration`): ``steps`` are the steps the sampler runs with it.

:class:`CallStateMixin` gives the three pipelines what depends on the current call: ``num_timesteps``
(diffusers' meaning), ``num_scales`` and :meth:`~CallStateMixin.token_grid`, plus ``weight_modules``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..acceleration.base import Acceleration, AccelerationTarget
from ..acceleration.presets import resolve_acceleration
from ..guidance.prefix import PrefixGuidance
from ..models.adapter import ScaleStep
from .guiders import CallGuidance


@dataclass(frozen=True)
class ResolvedCall:
    """A call with its defaults applied and every argument checked.

    Attributes:
        arguments: every argument of ``__call__`` by name, defaults applied (read only). Where the signature
            defaults to ``None`` for "the model's setting" (InfinityStar's ``guidance_scale``, ``num_frames``
            ...; Infinity's ``height`` / ``width``) the value the call uses.
        batch: outputs of the call (prompts x outputs per prompt).
        steps: the sampler's steps, in order (one per scale; InfinityStar: one per (scale, repetition)); with
            an accelerator that skips scales, the steps it runs.
        num_scales: resolution levels of the call (a VPG scale list indexes them).
        guidance: the guidance terms of the call (``guidance.chain``); the pipeline's strength properties
            steer them while the call runs.
        with_null: whether the call builds null-condition rows (CFG / APG / IGG on at some step).
        callback_tensor_inputs: the tensors handed to ``callback_on_step_end``.
        acceleration: the call's accelerator, resolved for the model and checked (``None``: none).
        schedule_steps: the schedule's steps before acceleration (empty: ``steps``).
    """

    arguments: Mapping[str, Any]
    batch: int
    steps: tuple[ScaleStep, ...]
    num_scales: int
    guidance: CallGuidance
    with_null: bool
    callback_tensor_inputs: tuple[str, ...]
    acceleration: Acceleration | None = field(default=None, kw_only=True)
    schedule_steps: tuple[ScaleStep, ...] = field(default=(), kw_only=True)

    @property
    def prefix(self) -> PrefixGuidance | None:
        """The call's prefix (VPG) term, whether built from the ``vpg_*`` arguments or given in ``guiders``."""
        return self.guidance.chain.prefix_term

    @property
    def step_scales(self) -> list[int]:
        """The scale of every step."""
        return [step.scale for step in self.steps]


def call_acceleration(value: Any, target: AccelerationTarget
                      ) -> tuple[Acceleration | None, tuple[ScaleStep, ...]]:
    """``acceleration=`` of a call: the accelerator resolved for ``target`` (raises where it does not apply, naming
    the argument) and the steps the sampler runs with it (``target.steps`` without one)."""
    method = resolve_acceleration(value)
    if method is None:
        return None, tuple(target.steps)
    method = method.resolve(target)
    return method, tuple(method.run_steps(target.steps))


def bind_arguments(pipe: Any, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``call_kwargs`` bound to ``type(pipe).__call__``'s signature, its defaults applied.

    Raises ``TypeError`` for an argument the call does not take (as the call itself would).
    """
    signature = inspect.signature(type(pipe).__call__)
    try:
        bound = signature.bind(pipe, **call_kwargs)
    except TypeError as err:  # worded as the call itself words it
        raise TypeError(f"{type(pipe).__name__}.__call__() {err}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    return arguments


def callback_tensor_inputs(callback: Any, tensor_inputs: list[str] | None) -> list[str]:
    """The tensors the step callback gets: a diffusers ``PipelineCallback`` names its own, else ``["latents"]``."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback.tensor_inputs
    return ["latents"] if tensor_inputs is None else tensor_inputs


def frozen(arguments: dict[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a call's arguments."""
    return MappingProxyType(arguments)


class CallStateMixin:
    """``num_timesteps``, ``num_scales`` and the token grids of the current call, and ``weight_modules``.

    While a call runs and after it returns, these describe that call; before the first call they describe a
    call with the default arguments (:meth:`_default_call_shape`).
    """

    _call_shape: tuple[tuple[ScaleStep, ...], int] | None = None
    _call_grids: tuple[ScaleStep, ...] = ()

    def _default_call_shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        """``(steps, num_scales)`` of a call with the default arguments."""
        raise NotImplementedError

    def _begin_call(self, call: ResolvedCall) -> None:
        self._call_shape = (call.steps, call.num_scales)
        self._call_grids = call.schedule_steps

    def _shape(self) -> tuple[tuple[ScaleStep, ...], int]:
        return self._call_shape if self._call_shape is not None else self._default_call_shape()

    @property
    def num_timesteps(self) -> int:
        """Sampler steps of the current call (diffusers' meaning), else of the last call, else of a call with
        the default arguments. A step is one scale (VAR, Infinity) or one (scale, repetition) pair
        (InfinityStar); ``callback_on_step_end`` runs once per step."""
        return len(self._shape()[0])

    @property
    def num_scales(self) -> int:
        """Resolution levels (scales) of the current call, else of the last call, else of a default call."""
        return self._shape()[1]

    def token_grid(self, scale_index: int) -> tuple[int, int]:
        """``(height, width)`` of the token grid of scale ``scale_index`` in the current call (else the last,
        else a default call); InfinityStar: the grid of one frame of the scale's first step."""
        steps, num_scales = self._shape()
        if isinstance(scale_index, bool) or not isinstance(scale_index, int) or not 0 <= scale_index < num_scales:
            raise ValueError(f"`scale_index` must be an integer in [0, {num_scales - 1}], got {scale_index!r}")
        if self._call_shape is not None and self._call_grids:  # scales an accelerator skips have grids too
            steps = self._call_grids
        step = next(s for s in steps if s.scale == scale_index)
        return int(step.grid[-2]), int(step.grid[-1])

    @property
    def weight_modules(self) -> dict[str, torch.nn.Module]:
        """The components that hold weights (``nn.Module`` s: transformer, VAE, text encoder when present), by
        name: what a host application's model management moves and frees together."""
        return {name: part for name, part in self.components.items() if isinstance(part, torch.nn.Module)}
