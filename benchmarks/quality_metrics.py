"""Image-quality metrics for the bundled emoji model: a small CNN feature space, FD and accuracy.

The classifier, its training and the Fréchet distance live in the package
(``vpg_pipelines/evaluation/emoji_classifier.py``, ``frechet.py``) so that ``vpg eval`` can use them; this
module adds the dataset, the cached default classifier and the command below.

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

from vpg_pipelines.evaluation import emoji_classifier as _package
from vpg_pipelines.evaluation.emoji_classifier import (  # noqa: F401  (re-exported: the code lives in the package)
    EmojiClassifier,
    as_image_batch,
    load_classifier,
    save_classifier,
    train_classifier,
)
from vpg_pipelines.evaluation.frechet import (  # noqa: F401
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "training" / "data" / "emoji32.npz"
DEFAULT_CLASSIFIER = REPO / "training" / "data" / "classifier_seed0.safetensors"
IMAGE_SIZE = _package.IMAGE_SIZE


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
    names_by_id = json.loads((path.parent / "labels.json").read_text(encoding="utf-8"))
    names = [names_by_id[str(i)] for i in range(len(names_by_id))]
    return EmojiData(names=names, **arrays)


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


def extract_features(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Penultimate classifier features, float64 ``(N, D)`` (default: the cached reference classifier)."""
    return _package.extract_features(images, _classifier(classifier), batch_size)


def predict(
    images: np.ndarray | torch.Tensor | Sequence, classifier: EmojiClassifier | None = None, batch_size: int = 512
) -> torch.Tensor:
    """Predicted class ids ``(N,)``."""
    return _package.predict(images, _classifier(classifier), batch_size)


def classifier_accuracy(
    images: np.ndarray | torch.Tensor | Sequence,
    labels: np.ndarray | torch.Tensor | Sequence[int],
    classifier: EmojiClassifier | None = None,
) -> float:
    """Fraction of images the classifier assigns to their given label."""
    return _package.classifier_accuracy(images, labels, _classifier(classifier))


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
