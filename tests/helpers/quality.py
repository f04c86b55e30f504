"""A fake emoji data set for the quality benchmarks' tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.quality_metrics import save_classifier, train_classifier

NUM_CLASSES = 30  # the bundled demo model's classes


@pytest.fixture
def fake_dataset(tmp_path):
    """A random-pixel ``emoji32.npz`` + ``labels.json`` with the demo model's classes, and a 1-epoch classifier."""
    rng = np.random.default_rng(0)
    n = 4 * NUM_CLASSES
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % NUM_CLASSES
    heldout = np.arange(n) >= 3 * NUM_CLASSES
    np.savez(tmp_path / "emoji32.npz", images=images, labels=labels, heldout=heldout, augmented=np.zeros(n, bool))
    (tmp_path / "labels.json").write_text(json.dumps({str(i): f"class-{i}" for i in range(NUM_CLASSES)}))
    classifier = tmp_path / "classifier.safetensors"
    save_classifier(train_classifier(images[~heldout], labels[~heldout], num_classes=NUM_CLASSES, epochs=1,
                                     width=8), classifier)
    return tmp_path / "emoji32.npz", classifier

