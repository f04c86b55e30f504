"""FasterVAR's shipped settings, by name (facts read from the authors' code, ``sen-mao/FasterVAR``).

Infinity fork at commit ``0653b99``, InfinityStar fork at ``74c82fc``; file:line citations refer to them.
The fixture notes (``tests/fixtures/fastervar/README.md``) list how each value was checked.
"""

from __future__ import annotations

RANK_RATIO_PRESETS: dict[str, tuple[float, ...]] = {
    "0.999": (  # line 5
        0.020000000000000594, 0.6004991240958406, 0.7216086968806518, 0.7737706261301985,
        0.788840274638338, 0.6986766783453878, 0.5478896360759493, 0.6730967450271229,
    ),
    "0.99": (  # line 10
        0.019285855560577967, 0.293348779385172, 0.4221099400994586, 0.4874607255877026,
        0.5068608725135622, 0.4066184448462932, 0.30911166365280274, 0.3778553062839056,
    ),
    "0.98": (  # line 15
        0.01833832504520782, 0.20916294642857164, 0.3166625226039782, 0.37463932527124844,
        0.38997979769439406, 0.30464328096745, 0.23449762658227885, 0.2828339737793854,
    ),
    "0.97": (  # line 20
        0.01752345162748569, 0.16511994235985522, 0.254407069394214, 0.3033422807414104,
        0.31386287861663714, 0.2429433205244116, 0.1891070015822789, 0.22856323462929504,
    ),
    "0.96": (  # line 25
        0.016776672694393688, 0.13648282097649195, 0.21039203774864412, 0.2502819846292948,
        0.2558836742766729, 0.1978790404611215, 0.1570015822784809, 0.19090034471066883,
    ),
    "0.95": (  # line 30
        0.01610194394213356, 0.11619080583182628, 0.17688842111211642, 0.2085889466546112,
        0.21022476830922243, 0.16353003503616628, 0.1338997513562388, 0.16312966207052415,
    ),
    "0.92": (  # line 35
        0.014375, 0.07593749999999999, 0.1378125, 0.17812499999999998,
        0.20437499999999997, 0.1634375, 0.1209375, 0.15531250000000002,
    ),
    "0.91": (  # line 40
        0.013707052441229887, 0.0706597536166362, 0.1301343523960218, 0.1664638901446654,
        0.18009451288426764, 0.13909937273960235, 0.11515187047920432, 0.14362539556962073,
    ),
    "0.90": (  # line 45
        0.013196767631103015, 0.06356860307414129, 0.11821894778481003, 0.1520294134267632,
        0.16453195637432166, 0.1279608386075949, 0.10703238019891466, 0.1334040178571429,
    ),
    "0.85": (  # line 50
        0.010942585895117683, 0.039735957278481025, 0.076915969710669, 0.10066385058770348,
        0.10979741184448454, 0.08838000113019882, 0.07826472084086832, 0.09724768309222448,
    ),
    "0.80": (  # line 55
        0.00910841433092208, 0.028276305379747214, 0.05317896699819165, 0.0698177554249549,
        0.07701344936708854, 0.0637841885171792, 0.06082264353526288, 0.07527901785714326,
    ),
    "0.70": (  # line 60
        0.006333917269439515, 0.01865153141952948, 0.02978879407775786, 0.03733428458408656,
        0.04182046790235078, 0.035865167269439294, 0.03988782775768618, 0.0493830526672683,
    ),
}
"""``Infinity/infinity/utils/rank_ratio.py``: per preset (named by the retained spectral energy), the ratio of
each eighth of the depth (the released 2B and 8B both have 8 block chunks) at the low-rank scale (the
``scale40`` entries: the ``scale48`` / ``scale64`` entries are never reached, those scales are skipped).
The rank of a group is ``⌊ratio·N⌋ + 1`` for a scale of ``N`` tokens (``Infinity/infinity/models/infinity.py:586``)."""

SHIPPED_RANK_PRESET = "0.96"
"""The preset both Infinity scripts pass (``Infinity/tools/interactive_infer.py:106``,
``interactive_infer_8B.py:107``)."""
INFINITY_CFG0_LAST_SCALES = 3
"""``cfg_list[-3:] = 0`` (``Infinity/tools/interactive_infer.py:73-75``, ``interactive_infer_8B.py:73-75``)."""
INFINITY_LAST_SCALE = 10
"""Index of the last scale Infinity's fork runs on the 1M / 0.60M 1:1 schedules (width 40, the low-rank scale):
the widths 48 and 64 after it are skipped (``Infinity/infinity/models/infinity.py:550-551, 581-590``)."""

STAR_RANK_RATIO = 0.1
"""``--rp_rank_ratio 0.1`` of the published InfinityStar run (``InfinityStar/README.md``); the rank is
``⌊N·ratio⌋`` clamped to ``[1, N]`` (``InfiniryStar/infinity/models/infinity.py:585-590``)."""
STAR_CFG0_LAST_SCALES = 3
"""``--cfg0_last_scales 3`` of the published InfinityStar run (``InfinityStar/README.md``)."""
STAR_SEED_OFFSET = 12345
"""``rp_seed < 0`` (the shipped ``-1``) seeds the projection generator with ``g_seed + 12345``, ``g_seed``
``None`` counting as 0 (``InfiniryStar/infinity/models/infinity.py:695-700``)."""
