"""VBench (InfinityStar): prompts from the user's VBench prompt list (``prompts/all_dimension.txt`` or a
per-dimension file), ``per_prompt`` videos each as ``<out>/videos/<prompt>-<i>.mp4``.

VBench's standard mode looks every prompt of its ``VBench_full_info.json`` up by exactly that name in
``--videos_path`` and takes the extension from the first file it lists, so the videos get a folder of their
own. A prompt listed twice (``all_dimension.txt`` has two) is sampled once: VBench finds it by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...paths import file_name_problem
from ...utils import export_to_video
from .base import VPG_KEYS, Protocol, Sample, check_count, existing_file, file_sha256

PAPER_SETTINGS = {"vpg_scale": 1.5, "vpg_corruption": 0.1, "vpg_mode": "full", "vpg_refresh": "persistent",
                  "vpg_scales": "semantic"}
"""Over the pipeline's defaults (the released ``tools/infer_video_720p.py``: APG cfg 34, norm threshold 0.05,
tau 1 / 0.4, 81 frames, 720 x 1280): our documented video VPG point (w 1.5, p 0.1, semantic scales)."""


def read_prompt_list(path: Path) -> list[str]:
    """Non-empty stripped lines, first occurrence of each prompt only."""
    if not path.is_file():
        raise ValueError(f"--prompts {path} must be a VBench prompt list (one prompt per line)")
    prompts, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        prompt = line.strip()
        if prompt and prompt not in seen:
            problem = file_name_problem(f"{prompt}-0.mp4")
            if problem:
                shown = repr(prompt) if len(prompt) <= 60 else f"{prompt[:60]!r}..."
                raise ValueError(f"--prompts {path}: prompt {shown} names its videos (VBench finds them by "
                                 f"name), but as a file name it {problem}")
            seen.add(prompt)
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompts")
    return prompts


class VBenchProtocol(Protocol):
    name = "vbench"
    pipeline = "VPGInfinityStarPipeline"
    default_chunk_size = 1
    output_kind = "videos"
    sampling_keys = ("negative_prompt", "num_frames", "height", "width", "guidance_scale", "guidance",
                     "apg_norm_threshold", "tau_image", "tau_video", *VPG_KEYS)

    def __init__(self, prompt_file: str | Path | None, per_prompt: int = 5, limit: int | None = None,
                 fps: int = 16) -> None:
        check_count("--per-prompt", per_prompt)
        check_count("--limit", limit)
        self.path = existing_file("--prompts", prompt_file)
        self.prompts = read_prompt_list(self.path)[:limit]
        self.per_prompt = per_prompt
        self.limit = limit
        self.fps = fps

    def samples(self) -> list[Sample]:
        return [Sample(g * self.per_prompt + j, g, j, p) for g, p in enumerate(self.prompts)
                for j in range(self.per_prompt)]

    def inputs(self) -> dict[str, Any]:
        return {"prompts_sha256": file_sha256(self.path), "limit": self.limit, "per_group": self.per_prompt,
                "prompts": len(self.prompts)}

    def call_inputs(self, samples: Sequence[Sample]) -> dict[str, Any]:
        return {"prompt": [s.condition for s in samples]}

    @staticmethod
    def file_name(sample: Sample) -> str:
        return f"videos/{sample.condition}-{sample.slot}.mp4"

    def write(self, samples: Sequence[Sample], outputs: Sequence[Any], stage) -> None:
        for sample, frames in zip(samples, outputs, strict=True):
            export_to_video(frames, stage(self.file_name(sample)), fps=self.fps)

    def preset(self, name: str, pipe) -> dict[str, Any]:
        return dict(PAPER_SETTINGS) if name == "paper" else {}

    def complete(self, call: dict[str, Any], pipe, preset: str) -> dict[str, Any]:
        # the pipeline reads None as "the model's released settings": record the values it will use
        for key, value in pipe.call_defaults.items():
            if key in call and call[key] is None and value is not None:
                call[key] = value
        if call.get("height") is None and call.get("width") is None:
            call["height"], call["width"] = (int(x) for x in pipe.default_size)
        return call
