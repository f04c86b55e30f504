"""What "the same result" means in tests that compare two runs of different layout.

Two runs whose batch layout, row count, thread count, CPU, device or dtype differ are equal only up
to floating-point rounding: a matrix product over 8 rows may take another kernel path than over 4
rows (and does, on some CPUs), and the sums come out in another order. PyTorch does not promise
bit identity across such runs, so the tests that compare them assert

* logits within :func:`layout_atol`, a tolerance derived from the dtype, the logits' magnitude and
  the amplification of the guidance on the way (CFG, APG, VPG's ``w``); a temperature ``1/tau``
  scales logits and their rounding alike, so a tolerance relative to the logits' magnitude covers it;
* sampled codes equal only where the run keeps them provably far from ties: greedy picks whose
  top-two gap exceeds twice the logits tolerance (:func:`assert_greedy_margin`), and multinomial
  draws whose exponential race is won by more than that (:func:`record_draws`).

Bitwise equality stays for literally the same computation (same rows, shapes and order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from vpg_pipelines.models import sample as sample_module

FP32_EPS = torch.finfo(torch.float32).eps
LAYOUT_ULPS = 32
"""Rounding budget of one fp32 forward under another layout, in ulps of the largest logit.

Each matrix product rounds its sums; another kernel path (row count, threads, CPU model) reorders
them, which moves a result by a few ulps of the largest term, and the tiny test models stack a few
such layers, norms and a softmax. Seen: under 1 ulp on an AMD EPYC with 1 and 2 threads, about
1-2 ulps (before the guidance gain) in the two runs that failed on an Intel Xeon (issue 15: 1e-5
after CFG's gain 9 on VAR logits of magnitude 6, 8e-5 after APG's gain 67 on InfinityStar logits of
magnitude 12). 32 leaves a margin of more than 10 and stays far below what a wrong row, cache entry
or pattern changes (0.01 and more).
"""


def cfg_gain(scale: float) -> float:
    """Error amplification of ``s*c + (1-s)*u``: an error ``e`` in c and u gives ``(|s| + |1-s|) e``."""
    return abs(scale) + abs(1.0 - scale)


def vpg_gain(w: float) -> float:
    """Error amplification of ``g~ + w (g - g~)`` (the same form as CFG)."""
    return cfg_gain(w)


def apg_gain(scale: float) -> float:
    """Error amplification of APG ``c + (s-1)(orthogonal part of a clipped c - u)``: at most ``1 + 2|s-1|``.

    The projection and the RMS clip are contractions (norm <= 1) of ``c - u``, whose error is at
    most twice the error of one input.
    """
    return 1.0 + 2.0 * abs(scale - 1.0)


def layout_atol(reference: torch.Tensor | float, gain: float = 1.0, ulps: float = LAYOUT_ULPS) -> float:
    """Absolute tolerance for fp32 logits of the same model run with another layout.

    ``reference`` is the logits (or their largest magnitude) before the guidance, ``gain`` the
    product of the guidance amplifications after it (:func:`cfg_gain`, :func:`vpg_gain`, ...).
    """
    magnitude = reference.abs().max().item() if isinstance(reference, torch.Tensor) else float(reference)
    return gain * ulps * FP32_EPS * max(1.0, magnitude)


def trace_atol(trace, gain: float = 1.0) -> float:
    """:func:`layout_atol` for every step of a ``SamplerTrace``, from its largest guided logit."""
    return layout_atol(max(g.abs().max().item() for g in trace.guided.values()), gain)


def assert_greedy_margin(logits: torch.Tensor, atol: float, classes: int | None = None) -> None:
    """Greedy (top-1) picks of ``logits (..., V)`` cannot flip under a per-logit error up to ``atol``.

    ``classes`` views the last dimension as groups of that many classes (2: bitwise logits).
    """
    if classes is not None:
        logits = logits.reshape(*logits.shape[:-1], -1, classes)
    top2 = logits.float().topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]).min().item()
    assert gap > 2 * atol, f"greedy pick within {gap:.2e} of a tie (tolerance {atol:.2e}): choose another seed/case"


def assert_trace_greedy_far_from_ties(trace, gain: float = 1.0, classes: int | None = None) -> None:
    """Every step's greedy picks in ``trace`` stay put under the layout tolerance of its logits."""
    for logits in trace.guided.values():
        assert_greedy_margin(logits, layout_atol(logits, gain), classes)


@dataclass
class DrawLog:
    """Every multinomial draw made inside :func:`record_draws`: codes per generator, and margins.

    ``torch.multinomial`` draws one sample as an exponential race, ``argmax(p / q)`` with
    ``q ~ Exp(1)`` from the generator. The race's winning log-margin ``log(p_i/q_i) - log(p_j/q_j)``
    equals ``(l_i - l_j) - (log q_i - log q_j)`` for logits ``l``, so an error of at most ``a`` on
    every logit moves it by at most ``2a``: a draw whose margin exceeds ``2a`` is the same draw.
    """

    margins: list[float] = field(default_factory=list)
    codes: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    """Codes of every draw, keyed by the generator's seed (``initial_seed``), in call order."""
    disagreements: list[float] = field(default_factory=list)
    """Under a replay: the margins of this run's own draws that differed from the replayed codes."""

    @property
    def min_margin(self) -> float:
        return min(self.margins) if self.margins else float("inf")

    def assert_far_from_ties(self, atol: float) -> None:
        assert self.margins, "no multinomial draw was recorded"
        assert self.min_margin > 2 * atol, (
            f"a sampled code was within {self.min_margin:.2e} of a tie (logits tolerance {atol:.2e}): "
            "choose another seed/case"
        )

    def assert_replay_agrees(self, atol: float) -> None:
        """This run's own draws equal the replayed codes except at ties within the logits tolerance."""
        assert self.margins, "no multinomial draw was recorded"
        far = [m for m in self.disagreements if m > 2 * atol]
        assert not far, f"{len(far)} own draws differ from the replayed codes although {min(far):.2e} from a tie"


@contextlib.contextmanager
def record_draws(replay: DrawLog | None = None) -> Iterator[DrawLog]:
    """Record every draw of ``vpg_pipelines.models.sample`` (all three models sample through it).

    Each draw is replayed from a copy of the generator state to recover its exponential race; the
    replay must reproduce the draw exactly, so a change in torch's algorithm fails loudly here.

    With ``replay`` (the log of a reference run), each draw still consumes its generator as usual,
    but returns the reference run's codes for the same generator seed, in order, and records where
    its own draw differed. Two runs of different layout then follow the same codes, so their logits
    can be compared at every step, and :meth:`DrawLog.assert_replay_agrees` checks that the codes
    would have been equal anyway wherever they were not within rounding of a tie. The draws of a run
    must each use one generator (a list of generators, one per sample) for the seeds to match.
    """
    log = DrawLog()
    original = sample_module._draw
    pending = {seed: list(codes) for seed, codes in replay.codes.items()} if replay is not None else None

    def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        gen = generator if generator is not None else torch.default_generator
        state = gen.get_state()
        own = original(probs, generator)
        copy = torch.Generator(device=gen.device)
        copy.set_state(state)
        p = probs.to(gen.device)
        race = p / torch.empty_like(p).exponential_(generator=copy)
        assert torch.equal(race.argmax(dim=-1).to(own.device), own), (
            "torch.multinomial no longer draws one sample as an exponential race; update tests/helpers/numerics.py"
        )
        if race.shape[-1] > 1:
            top2 = race.topk(2, dim=-1).values
            row_margin = (top2[:, 0].log() - top2[:, 1].log()).to(own.device)
        else:
            row_margin = torch.full(own.shape, float("inf"), device=own.device)
        log.margins.append(row_margin.min().item())
        out = own
        if pending is not None:
            seed = gen.initial_seed()
            assert pending.get(seed), f"the replayed run made no further draw with a generator of seed {seed}"
            out = pending[seed].pop(0).to(own.device)
            assert out.shape == own.shape, f"replayed codes {tuple(out.shape)} for a draw of {tuple(own.shape)}"
            log.disagreements.extend(row_margin[out != own].tolist())
        log.codes.setdefault(gen.initial_seed(), []).append(out)
        return out

    sample_module._draw = draw
    try:
        yield log
    finally:
        sample_module._draw = original


def assert_same_steps(reference, other, replayed: DrawLog, gain: float = 1.0, rows: slice = slice(None),
                      atol: float | None = None) -> None:
    """``other`` (a ``SamplerTrace`` of a run that replayed ``reference``'s draws) took the same steps.

    Its guided logits equal ``reference``'s (rows ``rows``) within ``atol`` (default: :func:`trace_atol`
    with ``gain``), and its own draws equal the replayed codes except at ties within twice that.
    """
    atol = trace_atol(reference, gain) if atol is None else atol
    replayed.assert_replay_agrees(atol)
    assert other.guided.keys() == reference.guided.keys()
    for k, logits in other.guided.items():
        torch.testing.assert_close(logits, reference.guided[k][rows], atol=atol, rtol=0)


def assert_same_greedy_steps(reference, other, gain: float = 1.0, classes: int | None = None,
                             rows: slice = slice(None), atol: float | None = None) -> None:
    """Like :func:`assert_same_steps` for greedy (top-1) runs, whose draws have no race to measure.

    ``other`` replayed ``reference``'s codes; its own greedy picks (the argmax of its logits) must
    equal them except where ``reference``'s top-two gap was within twice the tolerance.
    """
    atol = trace_atol(reference, gain) if atol is None else atol
    assert other.guided.keys() == reference.guided.keys()
    for k, logits in other.guided.items():
        ref = reference.guided[k][rows]
        torch.testing.assert_close(logits, ref, atol=atol, rtol=0)
        if classes is not None:
            logits, ref = (t.reshape(*t.shape[:-1], -1, classes) for t in (logits, ref))
        top2 = ref.float().topk(2, dim=-1).values
        differ = logits.argmax(dim=-1) != ref.argmax(dim=-1)
        gaps = (top2[..., 0] - top2[..., 1])[differ]
        assert not (gaps > 2 * atol).any(), f"step {k}: greedy picks differ {gaps.max().item():.2e} from a tie"


BF16_EPS = torch.finfo(torch.bfloat16).eps
BF16_ULPS = 4
"""Rounding budget of a bfloat16 forward against float32, in bf16 eps (2^-7) of the largest logit.

bf16 keeps 8 significant bits, so every matrix product's inputs and outputs are rounded to ~0.4 %;
on the tiny parity models an unguided logit moves by at most 1.35 (VAR), 0.97 (Infinity) and 1.26
(InfinityStar) eps x max|logit| (measured on the CPU, tests/pipelines/test_bf16_cpu.py). 4 leaves a margin of 3
and stays far below a real defect (a wrong dtype cast or a lost residual stream moves logits by their
whole magnitude).
"""


def bf16_atol(reference) -> float:
    """Tolerance of bf16 logits against the float32 ``reference`` trace (unguided: no gain)."""
    return BF16_ULPS * BF16_EPS * max(g.abs().max().item() for g in reference.guided.values())


@contextlib.contextmanager
def all_outputs_finite(*modules: torch.nn.Module) -> Iterator[list[str]]:
    """Check every tensor output of every submodule of ``modules`` for NaN / inf while inside.

    Module outputs cover the attention blocks (whose result is their module's output), the MLPs,
    norms, heads and every VAE layer. The names of offending modules are collected and asserted empty.
    """
    bad: list[str] = []
    handles = []

    def check(name):
        def hook(_module, _inputs, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for out in outputs:
                if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
                    bad.append(name)

        return hook

    for root in modules:
        for name, module in root.named_modules():
            handles.append(module.register_forward_hook(check(f"{type(root).__name__}.{name}")))
    try:
        yield bad
    finally:
        for h in handles:
            h.remove()
    assert not bad, f"NaN or inf in the outputs of {sorted(set(bad))[:10]}"
