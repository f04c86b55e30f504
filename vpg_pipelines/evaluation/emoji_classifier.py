"""The bundled demo model's reference classifier: a small CNN whose penultimate layer is the feature space of
its Fréchet distance (``frechet.py``), and whose predictions give class accuracy.

The emoji dataset (``training/build_emoji_dataset.py``) is too small and too far from ImageNet for Inception
features, so ``benchmarks/quality.py`` and ``vpg eval sweep`` / ``vpg eval fid --classifier`` measure the demo
model in this classifier's space. Images are uint8 ``(N, H, W, 3)`` arrays / tensors, float ``(N, 3, H, W)``
tensors in [0, 1], or lists of PIL images; anything not 32x32 is area-resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..devices import host_compute

IMAGE_SIZE = 32


def as_image_batch(images: np.ndarray | torch.Tensor | Sequence, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Any supported image batch as float32 ``(N, 3, size, size)`` in [0, 1]."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim != 4:
        raise ValueError(f"images must be a batch of shape (N, H, W, 3) or (N, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 channels, got shape {tuple(x.shape)}")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.contiguous()


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class EmojiClassifier(nn.Module):
    """Three conv blocks (32→16→8→4), global average pool, a feature layer, a linear head."""

    def __init__(self, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(_conv_block(3, width), _conv_block(width, 2 * width),
                                  _conv_block(2 * width, 4 * width))
        self.feature = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1], ``(N, feature_dim)``."""
        h = self.body(x * 2.0 - 1.0)
        return self.feature(h.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with white."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)).unbind(0)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 3, h, w + 2 * max_shift)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 3, h, w)
    return cropped.gather(3, cols)


def train_classifier(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    log_every: int = 0,
) -> EmojiClassifier:
    """Train ``EmojiClassifier`` with AdamW + cosine decay and random shifts; deterministic per seed."""
    x = as_image_batch(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) != len(y):
        raise ValueError(f"images ({len(x)}) and labels ({len(y)}) differ in length")
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter init and dropout
    model = EmojiClassifier(num_classes, width=width)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = _random_shift(x[idx], generator)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            loss_sum += float(loss.detach()) * len(idx)
        if log_every and (epoch + 1) % log_every == 0:
            print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.3f}, train acc {correct / total:.3f}")
    return model.eval()


def save_classifier(model: EmojiClassifier, path: str | Path) -> None:
    width = model.body[0][0].out_channels
    save_file(model.state_dict(), str(path), metadata={"num_classes": str(model.num_classes), "width": str(width)})


def load_classifier(path: str | Path) -> EmojiClassifier:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = EmojiClassifier(int(meta["num_classes"]), width=int(meta["width"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def extract_features(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier, batch_size: int = 512
) -> torch.Tensor:
    """Penultimate classifier features, float64 ``(N, D)`` on the CPU (the classifier may run on a device)."""
    model = classifier.eval()
    x = as_image_batch(images)
    features = torch.cat([model.features(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])
    with host_compute():
        return features.double()


@torch.no_grad()
def predict(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier, batch_size: int = 512
) -> torch.Tensor:
    """Predicted class ids ``(N,)``."""
    model = classifier.eval()
    x = as_image_batch(images)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def classifier_accuracy(
    images: np.ndarray | torch.Tensor | Sequence,
    labels: np.ndarray | torch.Tensor | Sequence[int],
    classifier: EmojiClassifier,
) -> float:
    """Fraction of images the classifier assigns to their given label."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    pred = predict(images, classifier).cpu()
    if len(pred) != len(y):
        raise ValueError(f"images ({len(pred)}) and labels ({len(y)}) differ in length")
    with host_compute():
        return float((pred == y).double().mean())
