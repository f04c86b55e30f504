"""The base of every accelerator: a sampler part beside the guidance terms.

A guidance term changes *what* a step samples from; an accelerator changes *what a step costs*,
training-free, by computing less (token pruning), keeping less (a K/V budget) or running fewer steps.
Like a term it declares what it needs from a step and leaves the doing to the sampler and the model:

- :meth:`Acceleration.run_steps`: the steps the sampler runs (a method may skip trailing scales);
- :meth:`Acceleration.token_plan`: which tokens each block computes at a step
  (:class:`~vpg_pipelines.models.adapter.TokenPlan`: kept indices per row and a fill rule; the
  transformer calls it per block and sub-layer);
- :meth:`Acceleration.kv_budget`: how each layer's K/V cache is compressed after its attention at a
  step (:class:`~vpg_pipelines.models.kv_cache.KVBudget`; the cache applies it, per row and head);
- :meth:`Acceleration.appended_entries` / :meth:`Acceleration.kept_entries`: the cache entries a step
  leaves in each layer, so that the sampler sizes the cache and the memory planner counts it exactly.

The loop (``sampling/next_scale.py``) composes an accelerator with the guidance rows: a plan or a
budget acts on every row of the batch, and each row chooses from its own features (the conditional,
null and VPG-corrupted rows alike), so the rows of a guided step are pruned by the same rule as the
clean row. Per-row state a method keeps (FastVAR's cached sub-layer outputs) lives in the cache's row
state, so it joins and leaves with the rows.

A pipeline resolves ``acceleration=`` (a preset name or a config object) in ``resolve_call`` and
checks it against the call (:class:`AccelerationTarget`): a method refuses, naming the argument and
what it applies to, where its authors' rule does not carry over without guesswork.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..models.adapter import RowBatch, ScaleStep, StreamPlan, TokenPlan
from ..models.kv_cache import KVBudget, KVCache

SelectionOverride = Callable[[ScaleStep, int, str, int], torch.Tensor | None]
"""``select(step, block_or_layer, part, rows) -> indices or None``: a test hook that replaces a method's own
choice in a call of ``rows`` batch rows (``part``: a sub-layer name for token plans, ``"kv"`` for a K/V budget).
Indices for fewer rows force the first rows only; the others choose by the method's rule."""


@dataclass(frozen=True)
class AccelerationTarget:
    """The call an accelerator is checked against (a pipeline's ``resolve_call`` builds it).

    Attributes:
        model: the model kind (``"var"``, ``"infinity"``, ``"infinity_star"``).
        depth: transformer blocks.
        steps: the sampler's steps before acceleration.
        num_scales: resolution levels of the call.
        template: Infinity's ``(h_div_w_template, pn)`` when the schedule is one of its templates
            (scale ``k`` is then entry ``k`` of the template's 13 grids); ``None`` otherwise.
        details: other model facts a method needs (e.g. InfinityStar's plan).
    """

    model: str
    depth: int
    steps: tuple[ScaleStep, ...]
    num_scales: int
    template: tuple[float, str] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class AccelerationError(ValueError):
    """An accelerator that does not apply to a call; the message names ``acceleration``."""

    argument = "acceleration"


class Acceleration:
    """Base class of the accelerators (frozen dataclasses: a config, no run state).

    Class attributes:
        name: the preset-style name (``"fastvar"``).
        models: the model kinds it applies to.
        needs_token_plans: whether the adapter must honour ``RowBatch.token_plan`` (a ``TokenPlan``).
        needs_stream_plans: whether the adapter must honour a ``StreamPlan`` there.
        grows_cache: whether the cache holds each layer at its current length (a budget shrinks it)
            instead of preallocating the run's capacity.
    """

    name: ClassVar[str] = ""
    models: ClassVar[tuple[str, ...]] = ()
    needs_token_plans: ClassVar[bool] = False
    needs_stream_plans: ClassVar[bool] = False
    grows_cache: ClassVar[bool] = False
    unset_fields: ClassVar[tuple[str, ...]] = ("selection_override",)
    """Fields a config (:meth:`from_config`) does not set: test hooks and what resolving a call fills in."""

    # -- a config from JSON-style settings (the CLI, ComfyUI) ------------------------------------------------
    @classmethod
    def config_fields(cls) -> list[str]:
        """The settings :meth:`from_config` takes (the dataclass fields a user sets)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in cls.unset_fields]

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> Acceleration:
        """The method from JSON-style ``settings`` (its fields by name; lists read as tuples)."""
        unknown = sorted(set(settings) - set(cls.config_fields()))
        if unknown:
            raise ValueError(f"`acceleration` {cls.name!r} takes the settings {cls.config_fields()}, not {unknown}")
        return cls(**{key: _as_tuples(value) for key, value in settings.items()})

    # -- resolving a call --------------------------------------------------------------------------------
    def refuse(self, reason: str) -> AccelerationError:
        """The error for a call this method does not apply to."""
        return AccelerationError(f"`acceleration` {self.name!r} {reason}")

    def check(self, target: AccelerationTarget) -> None:
        """Raise :class:`AccelerationError` when the method does not apply to ``target``."""
        if target.model not in self.models:
            raise self.refuse(f"applies to {' and '.join(self.models)} models, not {target.model}")

    def resolve(self, target: AccelerationTarget) -> Acceleration:
        """This method for the call ``target`` (settings that depend on the model filled in), checked."""
        self.check(target)
        return self

    # -- what it needs from a step ---------------------------------------------------------------------
    def run_steps(self, steps: Sequence[ScaleStep]) -> list[ScaleStep]:
        """The steps the sampler runs (default: all). A method may only drop trailing steps."""
        return list(steps)

    def start(self, batch: int, generator: torch.Generator | list[torch.Generator] | None) -> Acceleration:
        """The accelerator of one sampling run of ``batch`` samples drawing from ``generator`` (the call's): this
        setting itself, or a copy holding the run's state (e.g. FasterVAR's random generators)."""
        return self

    def condition_off(self, step: ScaleStep) -> bool:
        """Whether ``step`` samples the null-condition rows alone (FasterVAR's CFG off): from the first such
        step on (a suffix of the run) the conditional rows leave the batch and the cache, and the condition
        terms (CFG, APG, IGG) do not act."""
        return False

    def token_plan(self, step: ScaleStep, cache: KVCache, batch: RowBatch | None = None
                   ) -> TokenPlan | StreamPlan | None:
        """The token pruning or reduced stream of a (one-step) call of ``batch``'s rows that uses ``cache``;
        ``None``: every token."""
        return None

    def kv_budget(self, step: ScaleStep) -> KVBudget | None:
        """The cache compression after each layer's attention at ``step``; ``None``: keep everything."""
        return None

    def after_step(self, step: ScaleStep, cache: KVCache) -> None:
        """Called when ``step`` is over (e.g. to free row state no later step reads)."""

    # -- what it leaves in the cache (sizing and planning) ---------------------------------------------
    def appended_entries(self, step: ScaleStep, layer: int) -> int:
        """Entries a storing step appends to ``layer``'s cache (default: one per site)."""
        return step.num_sites

    def kept_entries(self, step: ScaleStep, layer: int, length: int) -> int:
        """Entries ``layer`` keeps after ``step``'s attention when it holds ``length`` (default: all)."""
        return length

    def row_state(self, steps: Sequence[ScaleStep], position: int, num_layers: int, width: int, ended: bool
                  ) -> dict[Any, tuple[tuple[int, ...], torch.dtype]]:
        """The row state the cache holds after the forward of ``steps[position]`` (``ended``: once the step is
        over, after :meth:`after_step`): key -> (shape of one row, dtype), for a model of ``num_layers`` blocks
        of ``width`` channels. The memory planner's view of what :meth:`token_plan` keeps."""
        return {}

    # -- tests -----------------------------------------------------------------------------------------
    def with_selection(self, select: SelectionOverride | None) -> Acceleration:
        """A copy whose selections ``select`` replaces wherever it returns indices (a test hook: replay the
        selections stored by the authors' code, immune to rounding at a selection boundary)."""
        return dataclasses.replace(self, selection_override=select)


def _as_tuples(value: Any) -> Any:
    """JSON lists (nested too) as the tuples the frozen configs hold."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the ``k`` largest ``scores`` along the last axis; among values equal to the
    ``k``-th largest, the lowest indices (CUDA ``torch.topk``'s choice, made deterministic on every device).

    Sorting and comparisons only (no ``topk``, no stable sort), so the choice is the same on CPU, CUDA and MPS.
    """
    n = scores.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} entries")
    if k == 0:
        return scores.new_zeros((*scores.shape[:-1], 0), dtype=torch.long)
    kth = scores.sort(dim=-1, descending=True).values[..., k - 1 : k]
    above = scores > kth
    ties = scores == kth
    wanted = k - above.sum(dim=-1, keepdim=True)
    chosen = above | (ties & (ties.to(torch.int32).cumsum(dim=-1) <= wanted))
    positions = torch.arange(n, device=scores.device).expand(scores.shape)
    return torch.where(chosen, positions, positions + n).sort(dim=-1).values[..., :k]
