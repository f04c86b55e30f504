"""Sets of images for the metrics: a folder (a ``vpg eval sample`` run or any images), or an ``.npz`` batch.

- an ADM batch (``arr_0``: N x H x W x 3 uint8; reference batches such as ``VIRTUAL_imagenet256_labeled.npz``
  or the output of ``vpg eval pack``);
- the emoji dataset of ``training/build_emoji_dataset.py`` (``images`` + ``heldout``): its held-out images;
- a folder: every ``.png`` / ``.jpg`` / ``.jpeg`` / ``.webp`` below it, in sorted path order (hidden
  folders such as ``.partial/`` skipped).

Batches are uint8 ``(N, H, W, 3)``. Images whose size differs from the requested one are centre-cropped to
its aspect ratio and resized (bicubic), as ADM prepares real images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def fit(image: PIL.Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` as uint8 ``(H, W, 3)`` of ``size`` = (height, width): centre crop to the aspect, then bicubic."""
    image = image.convert("RGB")
    height, width = size
    if image.size != (width, height):
        scale = min(image.width / width, image.height / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), PIL.Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


class ImageSet:
    """``len()`` images, read in batches; ``size`` is the (height, width) of the first one."""

    def __init__(self, path: str | Path, flag: str = "images") -> None:
        self.path = Path(path).expanduser()
        self._array: np.ndarray | None = None
        self._files: list[Path] = []
        if not self.path.exists():
            raise FileNotFoundError(f"{flag} {self.path}: no such file or folder")
        if self.path.is_dir():
            self._files = [p for p in sorted(self.path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
                           and p.is_file() and not any(part.startswith(".")
                                                       for part in p.relative_to(self.path).parts)]
            if not self._files:
                raise ValueError(f"{flag} {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif self.path.suffix == ".npz":
            with np.load(self.path) as data:
                if "arr_0" in data:
                    array = data["arr_0"]
                elif "images" in data:
                    array = data["images"][data["heldout"]] if "heldout" in data else data["images"]
                else:
                    raise ValueError(f"{flag} {self.path} has neither `arr_0` (an ADM batch) nor `images`")
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise ValueError(f"{flag} {self.path}: images must be N x H x W x 3 uint8, got {array.shape} "
                                 f"{array.dtype}")
            self._array = array
        else:
            raise ValueError(f"{flag} {self.path} must be a folder of images or an .npz batch")

    @classmethod
    def from_files(cls, files: list[Path], flag: str = "images") -> ImageSet:
        """Exactly these image files, in this order."""
        missing = [f for f in files if not Path(f).is_file()]
        if missing or not files:
            raise FileNotFoundError(f"{flag}: missing images, e.g. {missing[:3]}" if missing else f"{flag}: no images")
        self = cls.__new__(cls)
        self.path, self._array, self._files = Path(files[0]).parent, None, [Path(f) for f in files]
        return self

    def __len__(self) -> int:
        return len(self._array) if self._array is not None else len(self._files)

    @property
    def size(self) -> tuple[int, int]:
        if self._array is not None:
            return tuple(self._array.shape[1:3])
        with PIL.Image.open(self._files[0]) as image:
            return image.height, image.width

    def batches(self, batch_size: int, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """uint8 ``(B, H, W, 3)`` batches in order, every image at ``size`` (default: its own set's ``size``)."""
        size = tuple(size or self.size)
        for start in range(0, len(self), batch_size):
            if self._array is not None:
                part = self._array[start : start + batch_size]
                if part.shape[1:3] != size:
                    part = np.stack([fit(PIL.Image.fromarray(x), size) for x in part])
                yield part
            else:
                images = []
                for file in self._files[start : start + batch_size]:
                    with PIL.Image.open(file) as image:
                        images.append(fit(image, size))
                yield np.stack(images)
