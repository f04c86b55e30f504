"""``vpg eval pack``: a finished ImageNet run folder -> the ``.npz`` sample batch of the ADM evaluator.

``arr_0``: N x H x W x 3 uint8 in class order (the run's sample order: class by class, ``per_class`` each);
``arr_1``: the class labels (int64), as guided-diffusion's own sampling script stores them. The evaluator
(``evaluations/evaluator.py`` of openai/guided-diffusion) reads ``arr_0``. The file is written as a zip of
``.npy`` members like ``numpy.savez`` does, streamed image by image (a 50,000-image 512 px batch does not fit in
memory at once), into a temporary name renamed into place when complete.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image

from .protocols.imagenet import ImageNetProtocol, parse_classes
from .run_folder import RunFolder
from .sharding import ChunkPlan


def run_protocol(folder: RunFolder) -> tuple[dict, ImageNetProtocol]:
    """The ImageNet protocol a run folder was sampled with (from its ``run.json``)."""
    settings = folder.read()["settings"]
    if settings.get("protocol") != "imagenet":
        raise ValueError(f"{folder.root} holds a {settings.get('protocol')!r} run; `vpg eval pack` packs imagenet runs")
    inputs = settings["inputs"]
    classes = parse_classes(inputs["classes"], num_classes=2**31)  # ids were checked against the model when sampled
    return settings, ImageNetProtocol(classes, inputs["per_group"])


def _write_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, rows) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, header)
        for row in rows:
            member.write(np.ascontiguousarray(row, dtype=dtype).tobytes())


def pack_imagenet(run: str | Path, out: str | Path) -> Path:
    """Pack a complete ImageNet run into ``out`` (``.npz``); refuses an unfinished run."""
    folder = RunFolder(run)
    settings, protocol = run_protocol(folder)
    samples = protocol.samples()
    plan = ChunkPlan(len(samples), settings["chunk_size"])
    done = folder.finished_chunks()
    missing = [c for c in range(plan.num_chunks) if c not in done]
    if missing:
        raise ValueError(f"{folder.root} is unfinished: {len(missing)} of {plan.num_chunks} chunks missing "
                         f"(first: {missing[:5]}); rerun the same `vpg eval sample` command to finish it")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out} must end in .npz")
    files = [folder.root / ImageNetProtocol.file_name(s) for s in samples]
    with PIL.Image.open(files[0]) as first:
        height, width = first.height, first.width

    def images():
        for file in files:
            with PIL.Image.open(file) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            if array.shape != (height, width, 3):
                raise ValueError(f"{file} is {array.shape}, the run's first image {(height, width, 3)}")
            yield array

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            _write_member(archive, "arr_0", (len(files), height, width, 3), np.uint8, images())
            labels = np.array([s.condition for s in samples], dtype=np.int64)
            _write_member(archive, "arr_1", labels.shape, np.int64, [labels])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
