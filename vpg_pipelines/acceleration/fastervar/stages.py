"""Where FasterVAR acts, stated for any depth and schedule (pure functions of the run's shape).

The authors' code keys its stages on the released models: Infinity skips the scales of width 48 and 64
and runs the width-40 scale low-rank; InfinityStar runs its final scale low-rank; both turn the condition
guidance off on the last scales. The rules here equal theirs where theirs runs and carry further:

- **run scales**: the scales up to ``last_scale`` run, later ones are skipped (Infinity: index 10, the
  width-40 scale of the 1:1 template at 1M and 0.60M; Infinity's templates are aligned by index, so
  index 10 holds about the same share of the final pixels in every aspect ratio);
- **low-rank scale**: the last scale that runs, with the previous run scale's group outputs as the fill;
- **block groups**: a list of ``L`` ratios splits the depth ``D`` into ``L`` consecutive groups, block
  ``i`` in group ``⌊i·L/D⌋`` (the released 2B / 8B: 8 chunks of 4 / 5 blocks, exactly their chunks);
- **CFG off**: the last ``cfg0_last_scales`` scales of the schedule (skipped ones included, as the
  authors' ``cfg_list[-k:] = 0`` counts them) sample the null-condition rows alone.
"""

from __future__ import annotations


def block_groups(depth: int, groups: int) -> list[tuple[int, range]]:
    """``(group index, blocks)`` of the non-empty groups, in order: block ``i`` is in group ``⌊i·groups/depth⌋``
    (with ``depth < groups`` some group indices hold no block and are absent)."""
    if depth < 1 or groups < 1:
        raise ValueError(f"`depth` and `groups` must be >= 1, got {depth} and {groups}")
    members: dict[int, list[int]] = {}
    for block in range(depth):
        members.setdefault(block * groups // depth, []).append(block)
    return [(g, range(b[0], b[-1] + 1)) for g, b in sorted(members.items())]


def last_run_scale(num_scales: int, last_scale: int | None) -> int:
    """The index of the last scale that runs (``last_scale`` beyond the schedule: its final scale)."""
    if last_scale is None:
        return num_scales - 1
    return min(last_scale, num_scales - 1)


def low_rank_scale(num_scales: int, last_scale: int | None) -> int | None:
    """The scale run low-rank: the last run scale, when the schedule reaches ``last_scale`` and a run scale
    precedes it (its fill); ``None`` otherwise (a schedule shorter than ``last_scale + 1`` scales runs whole,
    as the authors' code does on the 0.25M 1:1 schedule, whose widths stop at 32)."""
    if last_scale is not None and num_scales <= last_scale:
        return None
    scale = last_run_scale(num_scales, last_scale)
    return scale if scale >= 1 else None


def cfg_off_scales(num_scales: int, cfg0_last_scales: int) -> range:
    """The scales whose steps sample the null-condition rows alone (a suffix of the schedule)."""
    return range(max(0, num_scales - cfg0_last_scales), num_scales)
