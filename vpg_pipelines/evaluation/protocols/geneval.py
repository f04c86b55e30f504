"""GenEval (Infinity): prompts from the user's ``evaluation_metadata.jsonl``, GenEval's folder layout.

Output, as ``evaluation/evaluate_images.py`` of djghosh13/geneval reads it::

    <out>/<00000>/metadata.jsonl      the prompt's line of evaluation_metadata.jsonl (one JSON object)
    <out>/<00000>/samples/<0000>.png  per_prompt images (4 by default)

The evaluator only visits folders whose names are digits, so ``run.json`` and ``chunks/`` beside them are
ignored. GenEval's optional ``grid.png`` is not written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Sample, check_count, existing_file, file_sha256
from .text_to_image import TextToImageProtocol


def read_metadata(path: Path) -> list[str]:
    """The non-empty lines of an ``evaluation_metadata.jsonl``, each checked to be an object with a prompt."""
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--prompts {path} line {number} is not JSON ({err}); expected GenEval's "
                             "evaluation_metadata.jsonl") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise ValueError(f"--prompts {path} line {number} has no \"prompt\" string; expected GenEval's "
                             "evaluation_metadata.jsonl")
        lines.append(line.strip())
    if not lines:
        raise ValueError(f"--prompts {path} holds no prompts")
    return lines


class GenEvalProtocol(TextToImageProtocol):
    name = "geneval"
    default_chunk_size = 4

    def __init__(self, metadata_file: str | Path | None, per_prompt: int = 4, limit: int | None = None) -> None:
        check_count("--per-prompt", per_prompt)
        check_count("--limit", limit)
        self.path = existing_file("--prompts", metadata_file)
        self.lines = read_metadata(self.path)[:limit]
        self.per_prompt = per_prompt
        self.limit = limit

    def samples(self) -> list[Sample]:
        return [Sample(g * self.per_prompt + j, g, j, json.loads(line)["prompt"])
                for g, line in enumerate(self.lines) for j in range(self.per_prompt)]

    def inputs(self) -> dict[str, Any]:
        return {"prompts_sha256": file_sha256(self.path), "limit": self.limit, "per_group": self.per_prompt,
                "prompts": len(self.lines)}

    def write(self, samples: Sequence[Sample], outputs: Sequence[Any], stage) -> None:
        for group in sorted({s.group for s in samples}):
            stage(f"{group:05d}/metadata.jsonl").write_text(self.lines[group] + "\n", encoding="utf-8")
        for sample, image in zip(samples, outputs, strict=True):
            image.save(stage(f"{sample.group:05d}/samples/{sample.slot:04d}.png"), format="PNG")
