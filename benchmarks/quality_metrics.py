"""Image-quality metrics for the bundled emoji model: a small CNN feature space, FD and accuracy.

The emoji dataset (``training/build_emoji_dataset.py``) is too small and too far from ImageNet for
Inception features, so the feature space here is the penultimate layer of a small CNN classifier
trained on the dataset's train split (deterministic from a seed; a few CPU minutes). On top of it:

- ``frechet_distance(feats_a, feats_b)``: the Fréchet distance between Gaussians fitted to two
  feature sets (the FID formula, in this feature space); torch only, float64, eigen-decompositions.
- ``classifier_accuracy(images, labels)``: how often the classifier recognises the intended class
  of (generated) images, a proxy for class fidelity under guidance.

Images are uint8 ``(N, H, W, 3)`` arrays / tensors, float ``(N, 3, H, W)`` tensors in [0, 1], or
lists of PIL images; anything not 32x32 is area-resized.

    python benchmarks/quality_metrics.py   # train (or load) the classifier, print held-out figures
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "training" / "data" / "emoji32.npz"
DEFAULT_CLASSIFIER = REPO / "training" / "data" / "classifier_seed0.safetensors"
IMAGE_SIZE = 32


@dataclass
class EmojiData:
    """The arrays of ``emoji32.npz`` plus the class names of ``labels.json``."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64
    heldout: np.ndarray  # (N,) bool
    augmented: np.ndarray  # (N,) bool
    names: list[str]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images[~self.heldout], self.labels[~self.heldout]

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images[self.heldout], self.labels[self.heldout]


def load_emoji_dataset(path: str | Path = DEFAULT_DATA) -> EmojiData:
    """Load ``emoji32.npz`` (and ``labels.json`` beside it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python training/build_emoji_dataset.py` first")
    with np.load(path) as d:
        arrays = {k: d[k] for k in ("images", "labels", "heldout", "augmented")}
    names_by_id = json.loads((path.parent / "labels.json").read_text())
    names = [names_by_id[str(i)] for i in range(len(names_by_id))]
    return EmojiData(names=names, **arrays)


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
    from safetensors.torch import save_file

    width = model.body[0][0].out_channels
    save_file(model.state_dict(), str(path), metadata={"num_classes": str(model.num_classes), "width": str(width)})


def load_classifier(path: str | Path) -> EmojiClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = EmojiClassifier(int(meta["num_classes"]), width=int(meta["width"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_or_train_classifier(
    data_path: str | Path = DEFAULT_DATA, cache: str | Path | None = DEFAULT_CLASSIFIER, seed: int = 0
) -> EmojiClassifier:
    """The reference classifier: loaded from ``cache`` if present, else trained on the train split."""
    if cache is not None and Path(cache).exists():
        return load_classifier(cache)
    data = load_emoji_dataset(data_path)
    model = train_classifier(*data.train, num_classes=len(data.names), seed=seed)
    if cache is not None:
        save_classifier(model, cache)
    return model


_DEFAULT: dict[str, EmojiClassifier] = {}


def _classifier(classifier: EmojiClassifier | None) -> EmojiClassifier:
    if classifier is not None:
        return classifier
    if "model" not in _DEFAULT:
        _DEFAULT["model"] = load_or_train_classifier()
    return _DEFAULT["model"]


@torch.no_grad()
def extract_features(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Penultimate classifier features, float64 ``(N, D)``."""
    model = _classifier(classifier).eval()
    x = as_image_batch(images)
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double()


@torch.no_grad()
def predict(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Predicted class ids ``(N,)``."""
    model = _classifier(classifier).eval()
    x = as_image_batch(images)
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def classifier_accuracy(
    images: np.ndarray | torch.Tensor | Sequence,
    labels: np.ndarray | torch.Tensor | Sequence[int],
    classifier: EmojiClassifier | None = None,
) -> float:
    """Fraction of images the classifier assigns to their given label."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    pred = predict(images, classifier)
    if len(pred) != len(y):
        raise ValueError(f"images ({len(pred)}) and labels ({len(y)}) differ in length")
    return float((pred == y).double().mean())


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of ``(N, D)`` features, N >= 2."""
    f = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats).double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feats must be (N, D) with N >= 2, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((cov + cov.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_from_stats(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """||mu_a - mu_b||² + tr(A) + tr(B) - 2 tr((A^½ B A^½)^½), all in float64."""
    mu_a, cov_a, mu_b, cov_b = (torch.as_tensor(t).double() for t in (mu_a, cov_a, mu_b, cov_b))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}")
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    # tr sqrt(A^½ B A^½) = sum of square roots of its (non-negative) eigenvalues
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_cross
    return max(float(value), 0.0)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train/evaluate the emoji reference classifier.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_emoji_dataset(args.data)
    start = time.perf_counter()
    if args.retrain or not args.cache.exists():
        model = train_classifier(*data.train, num_classes=len(data.names), seed=args.seed, epochs=args.epochs,
                                 log_every=5)
        save_classifier(model, args.cache)
        print(f"trained in {time.perf_counter() - start:.0f} s -> {args.cache}")
    else:
        model = load_classifier(args.cache)
    x_test, y_test = data.test
    pred = predict(x_test, model).numpy()
    print(f"held-out accuracy {np.mean(pred == y_test):.3f} on {len(y_test)} images")
    per_class = [np.mean(pred[y_test == c] == c) for c in range(len(data.names))]
    print(f"held-out class-balanced accuracy {np.mean(per_class):.3f}")
    for c, name in enumerate(data.names):
        print(f"  {c:>2} {name:<20} {per_class[c]:.2f} ({np.sum(y_test == c)})")
    x_train = data.images[~data.heldout & ~data.augmented]
    f_train, f_test = extract_features(x_train, model), extract_features(x_test, model)
    print(f"FD(train, held-out) = {frechet_distance(f_train, f_test):.3f}")
    half = len(x_train) // 2
    perm = np.random.default_rng(0).permutation(len(x_train))
    print(f"FD(train half, train half) = {frechet_distance(f_train[perm[:half]], f_train[perm[half:]]):.3f}")
    noisy = np.clip(x_test.astype(np.float32) + np.random.default_rng(0).normal(0, 25, x_test.shape), 0, 255)
    print(f"FD(held-out + noise σ=25, held-out) = "
          f"{frechet_distance(extract_features(noisy.astype(np.uint8), model), f_test):.3f}")


if __name__ == "__main__":
    main()
