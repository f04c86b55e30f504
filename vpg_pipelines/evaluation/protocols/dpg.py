"""DPG-Bench (Infinity): one prompt per ``<item_id>.txt`` of the user's ``dpg_bench/prompts`` folder, four
images per prompt tiled 2 x 2 into ``<out>/images/<item_id>.png``.

ELLA's ``dpg_bench/compute_dpg_bench.py`` lists every file of ``--image-root-path`` (so the grids get a folder
of their own), takes the item id from the file name before the first dot, and with ``--pic-num 4``
``--resolution R`` crops the tiles (0,0)-(R,R), (R,0)-(2R,R), (0,R)-(R,2R), (R,R)-(2R,2R): images 0, 1 in
the top row, 2, 3 in the bottom row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image

from .base import Sample, check_count, existing_file, folder_sha256
from .text_to_image import TextToImageProtocol

TILES = 4


def read_prompt_folder(path: Path) -> list[tuple[str, str]]:
    """(item id, prompt) for every ``*.txt`` file, sorted by name."""
    if not path.is_dir():
        raise ValueError(f"--prompts {path} must be DPG-Bench's prompts folder (one <item_id>.txt per prompt)")
    items = []
    for file in sorted(path.glob("*.txt")):
        if "." in file.stem:
            raise ValueError(f"--prompts {file.name}: the evaluator cuts the item id at the first '.', so ids "
                             "cannot contain one")
        text = file.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"--prompts {file} is empty")
        items.append((file.stem, text))
    if not items:
        raise ValueError(f"--prompts {path} holds no .txt prompt files")
    return items


def tile(images: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """Four equal square images as a 2 x 2 grid (row-major)."""
    side = images[0].width
    if len(images) != TILES or any(im.size != (side, side) for im in images):
        raise ValueError(f"a DPG grid needs {TILES} square images of one size, got {[im.size for im in images]}")
    grid = PIL.Image.new("RGB", (2 * side, 2 * side))
    for k, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((k % 2) * side, (k // 2) * side))
    return grid


class DPGProtocol(TextToImageProtocol):
    name = "dpg"
    default_chunk_size = TILES

    def __init__(self, prompt_folder: str | Path | None, limit: int | None = None) -> None:
        check_count("--limit", limit)
        self.path = existing_file("--prompts", prompt_folder)
        self.files = sorted(self.path.glob("*.txt")) if self.path.is_dir() else []
        self.items = read_prompt_folder(self.path)[:limit]
        self.limit = limit

    @property
    def group_size(self) -> int:
        return TILES

    def samples(self) -> list[Sample]:
        return [Sample(g * TILES + j, g, j, text) for g, (_, text) in enumerate(self.items) for j in range(TILES)]

    def inputs(self) -> dict[str, Any]:
        return {"prompts_sha256": folder_sha256(self.files), "limit": self.limit, "per_group": TILES,
                "prompts": len(self.items)}

    def complete(self, call: dict[str, Any], pipe, preset: str) -> dict[str, Any]:
        call = super().complete(call, pipe, preset)
        if call["height"] != call["width"]:
            raise ValueError(f"dpg: the evaluator crops square tiles; --height {call['height']} and --width "
                             f"{call['width']} must be equal")
        return call

    def write(self, samples: Sequence[Sample], outputs: Sequence[Any], stage) -> None:
        for start in range(0, len(samples), TILES):
            group = samples[start].group
            if [s.group for s in samples[start : start + TILES]] != [group] * TILES:
                raise ValueError("a DPG chunk must hold whole prompts (4 images each)")
            item_id = self.items[group][0]
            tile(outputs[start : start + TILES]).save(stage(f"images/{item_id}.png"), format="PNG")
