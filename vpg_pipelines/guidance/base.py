"""The base of every guidance term, after diffusers' ``diffusers.guiders.BaseGuidance``.

A term is one rule that turns the logits of a step's branches into guided logits. Like a diffusers
guider it is a :class:`~diffusers.ConfigMixin` (``save_pretrained`` / ``from_pretrained`` of a
``guider_config.json``, ``new(**changes)``), can be switched with ``enabled`` / ``enable()`` /
``disable()``, and acts only between ``start`` and ``stop``, fractions of the sampler's steps (step
``i`` of ``N`` is in range when ``int(start * N) <= i < int(stop * N)``, diffusers' rule).

What differs from ``BaseGuidance`` (and why the class mirrors it instead of subclassing it) is the
contract with the sampler: a diffusers guider splits a denoiser's inputs into one batch per
prediction (``prepare_inputs`` / ``__call__`` over ``BlockState``s with a ``noise_pred``), while a
next-scale term declares what it **needs** from the one batched forward of a step and reduces it:

- ``NEEDS_CONDITIONS``: the null-condition rows (CFG, APG, IGG); ``reduce_conditions(cond, uncond,
  guided, step)`` runs on each prefix branch;
- ``NEEDS_PREFIX``: a corrupted copy of the generated prefix (VPG); ``reduce_prefix(clean,
  corrupted, step)``;
- ``NEEDS_PREVIOUS``: the logits it was given at earlier steps (SSG), kept in its run memory;
- ``NEEDS_NOTHING``: only the current guided logits (entropy-aware temperature).

The sampler builds the rows the active terms need, runs one forward, then
:class:`~vpg_pipelines.guidance.chain.GuidanceChain` applies the reductions in order. See
``docs/guidance.md`` for the recipe of a new term.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.utils import PushToHubMixin

if TYPE_CHECKING:
    from ..models.adapter import ScaleStep

MAX_STRENGTH = 1e4
"""The largest guidance strength a term accepts (CFG / APG scale, VPG's ``w``, IGG, SSG).

Guided logits grow linearly with the strength; float32 logits of magnitude ~10-100 overflow to inf and
sampling fails deep inside ``torch.multinomial`` from about 1e36 on, and nothing useful happens far
before (the released operating points are 1.3-34). A bound gives a clear error at the argument instead.
"""


def strength_ok(value: Any, low: float = 0.0) -> bool:
    """A real number (not a bool), finite, in ``[low, MAX_STRENGTH]``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            and low <= value <= MAX_STRENGTH)


GUIDER_CONFIG_NAME = "guider_config.json"
"""The file name diffusers' guiders save their config to (kept, so a folder reads the same way)."""

NEEDS_CONDITIONS = "conditions"
NEEDS_PREFIX = "prefix"
NEEDS_PREVIOUS = "previous"
NEEDS_NOTHING = "nothing"
NEEDS = (NEEDS_CONDITIONS, NEEDS_PREFIX, NEEDS_PREVIOUS, NEEDS_NOTHING)


@dataclass
class GuidanceStep:
    """What a term sees of the sampler at one step.

    Attributes:
        step: the sampler step (``index``, ``scale``, ``grid``, ``extra`` ...).
        num_steps: steps of the whole run (the ``N`` of ``start`` / ``stop``).
        num_scales: scales of the whole run (the ``K`` of per-scale schedules).
        categories: size of one categorical distribution in the logits' last dimension (``None``: the
            whole last dimension is one distribution, e.g. VAR's codebook; 2 for bitwise logits stored
            as flat pairs).
        memories: per-term run memory (see :meth:`memory`).
    """

    step: ScaleStep
    num_steps: int
    num_scales: int
    categories: int | None = None
    memories: dict[int, dict] = field(default_factory=dict)

    def memory(self, term: GuidanceTerm) -> dict:
        """A dict that lives for one sampling run, private to ``term`` (e.g. SSG's previous logits)."""
        return self.memories.setdefault(id(term), {})


class GuidanceTerm(ConfigMixin, PushToHubMixin):
    """Base class of the guidance terms (diffusers' ``BaseGuidance`` interface, next-scale contract).

    Subclasses set ``needs``, decorate their ``__init__`` with ``@register_to_config`` and call
    ``super().__init__(start, stop, enabled)``; then implement the reduction of their kind
    (``reduce_conditions``, ``reduce_prefix`` or ``reduce``).

    Args:
        start: fraction of the steps (in [0, 1)) before which the term does nothing.
        stop: fraction of the steps (in [start, 1]) from which the term does nothing.
        enabled: ``False`` switches the term off (it then changes nothing).
    """

    config_name = GUIDER_CONFIG_NAME
    needs: ClassVar[str] = NEEDS_NOTHING
    display_name: ClassVar[str] = "guidance"
    """Short name used in messages."""

    def __init__(self, start: float = 0.0, stop: float = 1.0, enabled: bool = True) -> None:
        if self.needs not in NEEDS:
            raise TypeError(f"{type(self).__name__}.needs must be one of {NEEDS}, got {self.needs!r}")
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"`{name}` must be a number, got {value!r}")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"`start` must be in [0, 1), got {start}")
        if not start <= stop <= 1.0:
            raise ValueError(f"`stop` must be in [start, 1] = [{start}, 1], got {stop}")
        if not isinstance(enabled, bool):
            raise ValueError(f"`enabled` must be a bool, got {enabled!r}")
        self._start, self._stop, self._enabled = float(start), float(stop), enabled

    # -- diffusers' BaseGuidance interface -----------------------------------------------------------
    @property
    def start(self) -> float:
        return self._start

    @property
    def stop(self) -> float:
        return self._stop

    @property
    def enabled(self) -> bool:
        return self._enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    @property
    def num_conditions(self) -> int:
        """Predictions per site the term combines (diffusers' meaning): 2 for a condition or prefix
        contrast, 1 for a term that reshapes one prediction."""
        return 2 if self.needs in (NEEDS_CONDITIONS, NEEDS_PREFIX) else 1

    def new(self, **changes: Any) -> GuidanceTerm:
        """A copy of this term's configuration with ``changes`` applied (diffusers' ``new``)."""
        return type(self).from_config(self.config, **changes)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs: Any) -> GuidanceTerm:
        """Load a term saved with :meth:`save_pretrained` (a folder holding ``guider_config.json``).

        Called on :class:`GuidanceTerm` itself it builds the class named in the file; called on a term
        class it requires that class.
        """
        config, kwargs = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder,
                                         return_unused_kwargs=True, **kwargs)
        name = config.get("_class_name")
        target = cls
        if cls is GuidanceTerm:
            classes = {c.__name__: c for c in _subclasses(GuidanceTerm)}
            if name not in classes:
                raise ValueError(f"{pretrained_model_name_or_path}: {name!r} is not a guidance term of this package "
                                 f"(known: {sorted(classes)})")
            target = classes[name]
        elif name is not None and name != cls.__name__:
            raise ValueError(f"{pretrained_model_name_or_path} holds a {name}, not a {cls.__name__}")
        return target.from_config(config, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``guider_config.json`` into ``save_directory`` (reload with :meth:`from_pretrained`)."""
        self.save_config(save_directory=save_directory, push_to_hub=push_to_hub, **kwargs)

    # -- when the term acts ----------------------------------------------------------------------------
    def in_range(self, step_index: int, num_steps: int) -> bool:
        """Whether step ``step_index`` of ``num_steps`` lies in ``[start, stop)`` (diffusers' rounding)."""
        return int(self._start * num_steps) <= step_index < int(self._stop * num_steps)

    def is_on(self, step: GuidanceStep) -> bool:
        """Enabled and in range at this step (a term may add its own conditions, e.g. a strength of 0)."""
        return self._enabled and self.in_range(step.step.index, step.num_steps)

    def uses_rows(self, step_scales: list[int], num_scales: int) -> bool:
        """Whether the rows this term needs must be built for a run whose step ``i`` samples scale
        ``step_scales[i]`` (only asked of condition and prefix terms)."""
        n = len(step_scales)
        return self._enabled and any(self.in_range(i, n) for i in range(n))

    def describe(self) -> str:
        """One line for messages and node displays."""
        return self.display_name

    # -- reductions (one per kind; the chain calls the one of ``needs``) ----------------------------------
    def reduce_conditions(self, cond: torch.Tensor, uncond: torch.Tensor | None, guided: torch.Tensor | None,
                          step: GuidanceStep) -> torch.Tensor | None:
        """Condition terms: the guided prediction of one prefix branch from its condition rows.

        ``cond`` / ``uncond`` are ``(prefix branches, B, n, *V)``; ``uncond`` is ``None`` when no null
        rows were built. ``guided`` is what the condition terms before this one made of the same rows
        (``None``: nothing yet). A term that contributes nothing at this step returns ``guided`` as it
        is (``None`` included); when the stage ends with ``None`` the branch keeps ``cond``.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a condition-axis term")

    def reduce_prefix(self, clean: torch.Tensor, corrupted: torch.Tensor | None, step: GuidanceStep) -> torch.Tensor:
        """Prefix terms: the guided prediction from the clean and corrupted branches (``corrupted`` is
        ``None`` at steps without a corrupted branch)."""
        raise NotImplementedError(f"{type(self).__name__} is not a prefix-axis term")

    def reduce(self, logits: torch.Tensor, step: GuidanceStep) -> torch.Tensor:
        """Terms on the guided logits (``needs`` previous or nothing): called at every step, in chain
        order, with the logits ``(B, n, *V)`` the terms before produced; return them unchanged when off."""
        raise NotImplementedError(f"{type(self).__name__} does not act on the guided logits")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def check_scale(name: str, value: Any, low: float = 0.0, allow_list: bool = True) -> None:
    """A finite number >= ``low``, or (``allow_list``) a non-empty list of them; the error names ``name``."""
    values = list(value) if allow_list and isinstance(value, (list, tuple)) else [value]
    ok = bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf") and v >= low
        for v in values
    )
    if not ok:
        kind = f"a finite number >= {low:g}" + (" or a non-empty list of them" if allow_list else "")
        raise ValueError(f"`{name}` must be {kind}, got {value!r}")


def per_scale_value(name: str, value: float | list[float], scale_index: int, num_scales: int) -> float:
    """``value`` at one scale: a number, or the entry of a one-per-scale list."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_scales:
            raise ValueError(f"`{name}` list has {len(value)} values for {num_scales} scales")
        return float(value[scale_index])
    return float(value)
