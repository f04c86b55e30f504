"""What a next-scale model implements so that the shared sampler can drive it.

The sampler (``sampling/next_scale.py``) knows nothing about VAR, Infinity or InfinityStar. Each model
ships a small adapter with the methods of :class:`NextScaleAdapter`; no model knows about guidance or
the sampler (this protocol, the K/V cache and the official sampling rules live here, under the models).

Rows. The sampler runs every branch in one batch. With CFG on, the condition axis has two groups
(real condition, null condition); with VPG on a guided step, the prefix axis has two groups (clean,
corrupted). Rows are ordered ``(prefix, condition, batch)`` with the corrupted group last, so that
dropping it is a truncation. The adapter sees rows only through :class:`RowBatch`: ``cond_index``
tells which *condition row* (``0 .. num_condition_rows-1``, as built by the adapter's own
``prepare``) every batch row uses.

Content and position. A visual site's full input embedding is split into *content* (the raw
next-scale input before ``word_embed``: a Cvae / bit-code vector) and *position* (an integer row
into the model's position table: learned absolute embeddings for VAR, RoPE angle rows for
Infinity / InfinityStar). Corruption gathers either or both with a donor index, which is why the
adapter must accept per-row ``position_ids`` instead of assuming a contiguous slice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .kv_cache import KVCache

HiddenHook = Callable[[int, torch.Tensor], torch.Tensor]
"""``hook(block_index, hidden) -> hidden``: called after every transformer block (CFG at a layer)."""

SUBLAYERS = ("self_attention", "cross_attention", "ffn")
"""The residual sub-layers of a block, in order, as a :class:`TokenPlan` names them."""


@runtime_checkable
class TokenPlan(Protocol):
    """Which tokens the blocks of one transformer call compute (token pruning by an accelerator).

    A transformer that supports plans calls, for every block and residual sub-layer (:data:`SUBLAYERS`),
    :meth:`keep` on the residual stream entering the sub-layer. ``None``: the sub-layer runs on every
    token and the transformer hands its output to :meth:`record`. Indices: the sub-layer runs on those
    tokens only (with their own positions, appending only their keys / values to the cache) and
    :meth:`fill` turns their output into the output of every token, which is added to the stream.
    Rows are the call's batch rows: every row keeps the same number of tokens, chosen per row.
    """

    def keep(self, block: int, sublayer: str, hidden: torch.Tensor) -> torch.Tensor | None:
        """``(R, n)`` indices of the tokens of ``hidden`` ``(R, N, C)`` the sub-layer computes, or ``None``."""

    def fill(self, block: int, sublayer: str, kept: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The sub-layer's output for all ``N`` tokens ``(R, N, C)`` from the kept tokens' output ``(R, n, C)``."""

    def record(self, block: int, sublayer: str, out: torch.Tensor) -> None:
        """The sub-layer's output ``(R, N, C)`` when it ran on every token (a method may keep it to fill from)."""


@runtime_checkable
class StreamPlan(Protocol):
    """Runs of blocks on a reduced residual stream (FasterVAR's low-rank block groups).

    A transformer that supports stream plans calls :meth:`enter` before every block, with the residual
    stream and the tokens' position ids: a reduced stream ``(R, r, C)`` with its ``r`` position ids replaces
    them for the following blocks (RoPE from those positions; the blocks' keys / values are the reduced
    tokens'); ``None``: nothing changes. After every block it calls :meth:`leave`: the full stream ``(R, N, C)``
    (the reduced run is over, the call's positions return), or ``None``. One step per call.
    """

    def enter(self, block: int, hidden: torch.Tensor, positions: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Before block ``block``: ``(stream, positions)`` to run on instead, or ``None``."""

    def leave(self, block: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """After block ``block``: the full stream to continue with, or ``None`` (a plan may also just look)."""


@dataclass(frozen=True)
class ScaleStep:
    """One step of the next-scale loop.

    Attributes:
        index: position of the step in the loop (0-based).
        scale: scale index (steps that repeat a scale share it; equals ``index`` without repetition).
        num_sites: number of tokens this step adds (sites of the scale's grid).
        grid: the scale's grid, ``(h, w)`` or ``(t, h, w)``.
        store_kv: whether this step's keys/values stay in the cache (False for non-final repetitions).
        semantic: whether the scale belongs to the model's "semantic" (early) scales.
        conditioning: whether the step's codes are given conditioning, not generated (InfinityStar's
            image-to-video image, a continued video): the same in every branch unless VPG is asked to
            corrupt them too (``PrefixGuidance.corrupt_conditioning``). Such steps come first.
        extra: model-specific data (e.g. which earlier scales this one attends to).
    """

    index: int
    scale: int
    num_sites: int
    grid: tuple[int, ...]
    store_kv: bool = True
    semantic: bool = False
    conditioning: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def corruptible(self) -> bool:
        """A single-site scale (the start token) has no other site to take a donor from."""
        return self.num_sites > 1 and self.index > 0


@dataclass
class StepInput:
    """The clean input of one step, per sample (not per row).

    ``content`` is ``(B, n, C_in)`` or ``None`` for the start step (whose input is built from the
    condition); ``position_ids`` is ``(n,)``: the position-table rows of the step's sites.
    """

    content: torch.Tensor | None
    position_ids: torch.Tensor


@dataclass
class RowBatch:
    """What one transformer call processes.

    Attributes:
        cond_index: ``(R,)`` condition row used by every batch row.
        content: ``(R, N, C_in)`` visual content, or ``None`` for the start step.
        position_ids: ``(R, N)`` position rows (per batch row, because corrupted rows differ).
        steps: the steps whose tokens are concatenated in ``content`` (one step normally; several
            consecutive steps when a corrupted prefix is (re)computed in one block-causal pass).
        token_plan: an accelerator's token pruning (:class:`TokenPlan`) or reduced stream
            (:class:`StreamPlan`) for this call (one step), or ``None``; only adapters with
            ``supports_token_plans`` / ``supports_stream_plans`` set accept one.
        prefix_index: ``(R,)`` prefix branch of every row (0 clean, 1 VPG-corrupted), for an accelerator
            that treats the branches apart; ``None``: every row is clean.
    """

    cond_index: torch.Tensor
    content: torch.Tensor | None
    position_ids: torch.Tensor
    steps: list[ScaleStep]
    token_plan: TokenPlan | StreamPlan | None = None
    prefix_index: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.cond_index.shape[0])


@runtime_checkable
class NextScaleAdapter(Protocol):
    """The model side of the sampler. ``state`` is the adapter's own object (per call)."""

    num_layers: int
    """Number of attention layers that use the KV cache."""

    # Optional: ``logit_categories: int`` — size of one categorical distribution in the logits' last
    # dimension when that dimension packs several (InfinityStar's flat bit pairs: 2). Absent: the last
    # dimension is one distribution (VAR's codebook; Infinity's logits end in a (bits, 2) pair already).
    # Guidance terms that need distributions (entropy-aware temperature) read it.
    # Optional: ``supports_token_plans: bool`` — True when ``forward`` honours ``RowBatch.token_plan``
    # (Infinity); the sampler refuses a token-pruning accelerator for an adapter without it. Likewise
    # ``supports_stream_plans: bool`` for a :class:`StreamPlan` (Infinity, InfinityStar).

    def steps(self, state: Any) -> list[ScaleStep]:
        """The loop's steps, in order."""

    def num_condition_rows(self, state: Any) -> int:
        """Rows of condition data ``prepare`` built: B (no CFG) or 2B (real rows, then null rows)."""

    def step_input(self, state: Any, step: ScaleStep) -> StepInput:
        """The clean content and positions of ``step`` (from the codes sampled so far)."""

    def forward(
        self,
        state: Any,
        batch: RowBatch,
        kv_cache: KVCache,
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
    ) -> torch.Tensor:
        """Run the transformer on ``batch`` attending to ``kv_cache``; return float32 logits.

        Tokens of several steps in one call attend block-causally (a token sees its own and earlier
        steps). ``last_tokens`` asks for the logits of the last ``n`` tokens only. The return value
        has shape ``(R, N or n, *V)``. Logits are what the official sampler would combine with CFG
        (e.g. already divided by a temperature ``tau`` where the model does that).
        """

    def random_content(self, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """``(count, C_in)`` contents of uniformly random codebook entries (the "codebook" corruption)."""

    def sample(
        self,
        state: Any,
        logits: torch.Tensor,
        step: ScaleStep,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """Draw this step's codes from the guided logits ``(B, n, *V)`` with the official semantics."""

    def update(self, state: Any, codes: torch.Tensor, step: ScaleStep) -> None:
        """Accumulate the sampled codes into the state (cumulative latent, next-step input)."""
