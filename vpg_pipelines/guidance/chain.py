"""The guidance chain: an ordered list of terms, reduced stage by stage after one batched forward.

Order (the paper's Table 1, extended):

1. **condition stage** — the terms that need the null-condition rows (CFG, APG, IGG) reduce the
   condition axis inside each prefix branch, in list order: the first one starts from the branch's
   rows, each later one adds its nudge to what the earlier ones made;
2. **prefix stage** — the term that needs the corrupted prefix (VPG, at most one) reduces the prefix
   axis: ``g~ + w·(g − g~)``;
3. **logits stage** — the terms on the single guided prediction (SSG, entropy-aware temperature ...)
   run in list order.

The stages are applied in this order whatever the list order (a stable sort), so ``[VPG, CFG]`` is
``[CFG, VPG]``; inside a stage the list order is kept. The pipelines build
``[CFG or APG, IGG, VPG, SSG, temperature]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import NEEDS_CONDITIONS, NEEDS_PREFIX, GuidanceStep, GuidanceTerm

STAGES = {NEEDS_CONDITIONS: 0, NEEDS_PREFIX: 1}


def stage_of(term: GuidanceTerm) -> int:
    """0 condition axis, 1 prefix axis, 2 the guided logits."""
    return STAGES.get(term.needs, 2)


class GuidanceChain:
    """Validated, stage-ordered terms plus the reductions the sampler applies at every step.

    Args:
        terms: guidance terms (``None`` entries are skipped). At most one term of each class and at
            most one prefix-axis term; a condition term that mixes at a hidden layer (CFG's
            ``layer != 0``) leaves no condition contrast at the logits, so it cannot be combined with
            a term that reads one (``reads_condition_logits``, e.g. IGG).
    """

    def __init__(self, terms: Sequence[GuidanceTerm | None] = ()) -> None:
        listed = [t for t in terms if t is not None]
        for i, term in enumerate(listed):
            if not isinstance(term, GuidanceTerm):
                raise TypeError(f"`guiders[{i}]` must be a guidance term (vpg_pipelines.guidance), "
                                f"got {type(term).__name__}")
        seen: dict[type, GuidanceTerm] = {}
        for term in listed:
            if type(term) in seen:
                raise ValueError(f"the guidance chain has two {type(term).__name__} terms; keep one "
                                 f"(a pipeline argument and a `guiders` entry can both add one)")
            seen[type(term)] = term
        self.terms: list[GuidanceTerm] = sorted(listed, key=stage_of)
        self.condition_terms = [t for t in self.terms if stage_of(t) == 0]
        prefix = [t for t in self.terms if stage_of(t) == 1]
        if len(prefix) > 1:
            raise ValueError(f"at most one prefix-axis term per chain, got {[type(t).__name__ for t in prefix]}")
        self.prefix_term: GuidanceTerm | None = prefix[0] if prefix else None
        self.logit_terms = [t for t in self.terms if stage_of(t) == 2]
        hidden = [t for t in self.condition_terms if getattr(t, "layer", 0) != 0]
        if len(hidden) > 1:
            raise ValueError("at most one condition term may mix at a hidden layer")
        self.hidden_term: GuidanceTerm | None = hidden[0] if hidden else None
        readers = [t for t in self.condition_terms if getattr(t, "reads_condition_logits", False)]
        if self.hidden_term is not None and readers:
            raise ValueError(f"{type(readers[0]).__name__} needs the conditional and null logits, but "
                             f"{type(self.hidden_term).__name__} mixes them at a hidden layer (layer "
                             f"{self.hidden_term.layer}), after which they are equal; use layer 0 "
                             "(Infinity: cfg_insertion_layer=0)")

    def __iter__(self):
        return iter(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def uses_conditions(self, step_scales: list[int], num_scales: int) -> bool:
        """Whether the null-condition rows must be built (some condition term acts at some step)."""
        return any(t.uses_rows(step_scales, num_scales) for t in self.condition_terms)

    def reduce_conditions(self, split: torch.Tensor, step: GuidanceStep) -> torch.Tensor:
        """``(prefixes, conditions, B, ...)`` logits -> ``(prefixes, B, ...)``, each prefix branch reduced
        over its condition rows by the condition terms in order (``conditions == 1``: no null rows)."""
        cond = split[:, 0]
        uncond = split[:, 1] if split.shape[1] > 1 else None
        guided = None
        for term in self.condition_terms:
            guided = term.reduce_conditions(cond, uncond, guided, step)
        return cond if guided is None else guided

    def reduce_prefix(self, clean: torch.Tensor, corrupted: torch.Tensor | None, step: GuidanceStep) -> torch.Tensor:
        """The prefix term's reduction (``clean`` when there is none)."""
        if self.prefix_term is None:
            return clean
        return self.prefix_term.reduce_prefix(clean, corrupted, step)

    def reduce_logits(self, logits: torch.Tensor, step: GuidanceStep) -> torch.Tensor:
        """The logits-stage terms in order (each is called at every step, so it can keep its memory)."""
        for term in self.logit_terms:
            logits = term.reduce(logits, step)
        return logits

    def describe(self) -> str:
        return " → ".join(t.describe() for t in self.terms) if self.terms else "no guidance"
