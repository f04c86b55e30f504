"""Thumbnails for ComfyUI's template browser from the outputs of tests/comfy/run_headless.sh.

ComfyUI lists a pack's ``workflows/`` folder in its template browser and shows ``<name>.jpg`` beside each
``<name>.json`` as its picture (the frontend asks for ``/api/workflow_templates/<pack>/<name>.jpg``). Each
thumbnail is what that workflow saved in the headless run: the images of its first Save Image node (a batch
tiled as a grid; for a video, its first, middle and last frames side by side), fitted into 512 x 512.

    python tests/comfy/make_thumbnails.py WORK/out workflows/     # thumbnails beside the shipped workflows
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
RUNS = {  # run_headless.sh's --out folder of each shipped workflow
    "vpg_demo_cfg_prefix": "demo",
    "vpg_demo_side_by_side": "side_by_side",
    "vpg_demo_guidance_stack": "guidance_stack",
    "vpg_var_d16": "var_standin",
    "vpg_infinity_tiny": "infinity_tiny",
    "vpg_infinity_tiny_fastvar": "infinity_tiny_fastvar",
    "vpg_infinity_2b": "infinity_2b_standin",
    "vpg_infinitystar_tiny": "star_tiny",
    "vpg_infinitystar_720p": "star_standin",
    "vpg_infinitystar_480p_i2v": "star480_i2v_standin",
    "vpg_infinitystar_480p_continuation": "star480_continuation_standin",
    "vpg_infinitystar_interact": "interact_standin",
}
SIDE = 512


def first_saved_prefix(workflow: dict) -> str:
    """The ``filename_prefix`` of the workflow's first Save Image node (by node id)."""
    saves = sorted((n for n in workflow["nodes"] if n["type"] == "SaveImage"), key=lambda n: n["id"])
    return saves[0]["widgets_values"][0]


def saved_images(folder: Path, prefix: str) -> list[Image.Image]:
    """``<prefix>_00001_.png``, ``<prefix>_00002_.png`` ... as ComfyUI's Save Image names them, in order."""
    pattern = re.compile(rf"^{re.escape(prefix)}_\d{{5}}_\.png$")
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir()) if pattern.match(p.name)]


def tile(images: list[Image.Image], columns: int) -> Image.Image:
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    return sheet


def thumbnail(images: list[Image.Image], video: bool) -> Image.Image:
    if video:
        picked = [images[0], images[len(images) // 2], images[-1]]
        sheet = tile(picked, len(picked))
    else:
        sheet = tile(images, math.ceil(math.sqrt(len(images))))
    scale = SIDE / max(sheet.size)
    size = (max(1, round(sheet.width * scale)), max(1, round(sheet.height * scale)))
    small_pixels = max(images[0].size) <= 128  # pixel-art demo outputs: keep their pixels sharp
    return sheet.resize(size, Image.NEAREST if small_pixels else Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outputs", type=Path, help="run_headless.sh's $WORK/out")
    ap.add_argument("target", type=Path, help="where the <workflow>.jpg files go (workflows/ to ship them)")
    args = ap.parse_args()
    for name, run in RUNS.items():
        workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
        video = any(n["type"] == "SaveVideo" for n in workflow["nodes"])
        images = saved_images(args.outputs / run, first_saved_prefix(workflow))
        if not images:
            raise SystemExit(f"{name}: no saved images in {args.outputs / run}")
        target = args.target / f"{name}.jpg"
        thumbnail(images, video).save(target, "JPEG", quality=88)
        print(f"{target}: {len(images)} saved images of {run}")


if __name__ == "__main__":
    main()
