"""ImageNet class-conditional sampling with VAR: ``per_class`` images of each class, in class order.

Files: ``images/<class:04d>/<j:04d>.png``. ``vpg eval pack`` turns them into the ADM evaluator's
``.npz`` (``arr_0`` N x H x W x 3 uint8 in class order, ``arr_1`` the labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...pipelines.pipeline_vpg_var import DEFAULT_VPG_SCALE, PAPER_VPG_SCALES
from .base import VPG_KEYS, Protocol, Sample, check_count

PAPER_SETTINGS = {"guidance_scale": 1.5, "top_k": 900, "top_p": 0.96, "more_smooth": False,
                  "vpg_corruption": 0.5, "vpg_mode": "full", "vpg_refresh": "persistent", "vpg_scales": "all"}
"""The official VAR FID settings (cfg 1.5 with the official linear ramp, top-k 900, top-p 0.96, no smoothing)
plus the paper's p = 0.5; w comes from the depth (``PAPER_VPG_SCALES``)."""


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """``None`` (all), or a comma list of ids and ranges: ``"0-9,207,980-999"``; returned in class order."""
    if text is None:
        return list(range(num_classes))
    ids: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if last < first:
                    raise ValueError
                ids.extend(range(first, last + 1))
            else:
                ids.append(int(part))
    except ValueError:
        raise ValueError(f"--classes must be class ids and ranges like '0-9,207', got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise ValueError(f"--classes must name ids in [0, {num_classes - 1}], got {text!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--classes names a class twice: {text!r}")
    return sorted(ids)


class ImageNetProtocol(Protocol):
    name = "imagenet"
    pipeline = "VPGVARPipeline"
    default_chunk_size = 25
    sampling_keys = ("guidance_scale", "top_k", "top_p", "more_smooth", *VPG_KEYS)

    def __init__(self, classes: Sequence[int], per_class: int = 50) -> None:
        check_count("--per-class", per_class)
        self.classes = list(classes)
        self.per_class = per_class

    def samples(self) -> list[Sample]:
        return [Sample(g * self.per_class + j, g, j, c) for g, c in enumerate(self.classes)
                for j in range(self.per_class)]

    def inputs(self) -> dict[str, Any]:
        return {"classes": _ranges(self.classes), "per_group": self.per_class}

    def call_inputs(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return {"class_labels": [s.condition for s in samples]}

    @staticmethod
    def file_name(sample: Sample) -> str:
        return f"images/{sample.condition:04d}/{sample.slot:04d}.png"

    def write(self, samples: Sequence[Sample], outputs: Sequence[Any], stage) -> None:
        for sample, image in zip(samples, outputs, strict=True):
            image.save(stage(self.file_name(sample)), format="PNG")

    def preset(self, name: str, pipe) -> dict[str, Any]:
        if name == "none":
            return {}
        depth = pipe.transformer.config.depth
        w = {"vpg_scale": PAPER_VPG_SCALES[depth]} if depth in PAPER_VPG_SCALES else {}
        return {**PAPER_SETTINGS, **w}

    def complete(self, call: dict[str, Any], pipe, preset: str) -> dict[str, Any]:
        if call.get("vpg_scale") is None:  # the pipeline's own rule: the paper's w for the depth, else its default
            depth = pipe.transformer.config.depth
            if preset == "paper" and depth not in PAPER_VPG_SCALES:
                raise ValueError(f"--preset paper: the paper gives w for VAR depths {sorted(PAPER_VPG_SCALES)}; "
                                 f"this model has depth {depth}: pass --vpg-scale too")
            call["vpg_scale"] = PAPER_VPG_SCALES.get(depth, DEFAULT_VPG_SCALE)
        return call


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (short and exact, for run.json)."""
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)
