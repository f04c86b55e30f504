"""FID and Inception Score of a sample set against a reference set, offline.

The metrics are torchmetrics' ``FrechetInceptionDistance`` and ``InceptionScore`` (maintained, float64
statistics, distributed-ready); the network runs once per batch and hands both metrics its outputs:

- ``--inception-weights FILE``: the FID Inception (the port of the TensorFlow graph the ADM evaluator uses,
  from torch-fidelity, which torchmetrics builds on) with weights read from ``FILE``, never downloaded:
  2048-d pool features for FID, the 1008-way "unbiased" logits for IS. Images are resized to 299 with
  TensorFlow-1-compatible bilinear interpolation, as the reference implementation does;
- ``--classifier FILE``: the bundled demo model's emoji classifier (``emoji_classifier.py``): its penultimate
  features and its class logits (a classifier-space FD and "classifier score"), for models far from ImageNet.

Any object with ``__call__(uint8 (N, H, W, 3)) -> (features (N, D), logits (N, K))`` works as the network.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..devices import host_compute
from .emoji_classifier import as_image_batch, load_classifier
from .image_sets import ImageSet

FeatureNet = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
IS_SPLIT_SIZE = 5000
"""Images per Inception Score split (the ADM evaluator's; at least one split)."""


class _Given(nn.Module):
    """Hands features computed outside to a torchmetrics metric (its ``update`` calls the 'network')."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class InceptionNet:
    """torch-fidelity's FID Inception (pool features + unbiased logits) with weights from a local file."""

    def __init__(self, weights: str | Path, device: torch.device | str = "cpu") -> None:
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"--inception-weights {weights}: no such file (nothing is downloaded)")
        try:  # torch-fidelity (and a matching torchvision) is optional: only the Inception metrics need it
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ImportError(
                "--inception-weights needs torch-fidelity (torchmetrics' Inception network) and a torchvision that "
                "matches your torch: pip install torch-fidelity 'torchvision==<the release paired with your torch>' "
                f"(see docs/eval.md); import failed with: {err}"
            ) from err
        try:  # torch-fidelity unpickles the file without weights_only: accept only what the safe loader accepts
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"--inception-weights {weights} is not a plain PyTorch state dict ({err}); use "
                             "torch-fidelity's weights-inception-2015-12-05-6726825d.pth") from None
        self.device = torch.device(device)
        self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                 feature_extractor_weights_path=str(weights)).eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        features, logits = self.model(x)
        features, logits = features.reshape(len(x), -1).cpu(), logits.cpu()
        with host_compute():  # float64 on the host only
            return features.double(), logits.double()


class ClassifierNet:
    """The emoji classifier's penultimate features and class logits (the demo model's feature space)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--classifier {path}: no such file")
        self.device = torch.device(device)
        self.model = load_classifier(path).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(as_image_batch(images).to(self.device))
        features, logits = features.cpu(), self.model.head(features).cpu()
        with host_compute():  # float64 on the host only
            return features.double(), logits.double()


def features_of(images: ImageSet, net: FeatureNet, batch_size: int, size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``net``'s features and logits (float64) of every image, each brought to ``size`` first."""
    parts = [net(batch) for batch in images.batches(batch_size, size)]
    with host_compute():
        return torch.cat([f.cpu() for f, _ in parts]).double(), torch.cat([g.cpu() for _, g in parts]).double()


def fid_is(sample_features: torch.Tensor, sample_logits: torch.Tensor, reference_features: torch.Tensor
           ) -> dict[str, Any]:
    """torchmetrics' FID (samples vs reference features) and Inception Score (of the sample logits).

    The IS splits follow the ADM evaluator (5,000 images each); torchmetrics shuffles before splitting,
    with a fixed seed here so the figure is reproducible.
    """
    # torchmetrics is optional (the `eval` extra): only these metrics need it
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    if len(sample_features) < 2 or len(reference_features) < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {len(sample_features)} samples and "
                         f"{len(reference_features)} reference images")
    splits = max(1, math.ceil(len(sample_logits) / IS_SPLIT_SIZE))
    with host_compute():  # torchmetrics' float64 statistics, on the CPU
        fid = FrechetInceptionDistance(feature=_Given(sample_features.shape[1]))
        fid.update(reference_features.cpu().double(), real=True)
        fid.update(sample_features.cpu().double(), real=False)
        with warnings.catch_warnings():
            # "will save all extracted features" (that is the plan); the std of a single split (reported as 0)
            warnings.simplefilter("ignore", UserWarning)
            inception = InceptionScore(feature=_Given(sample_logits.shape[1]), splits=splits)
            inception.update(sample_logits.cpu().double())
            with torch.random.fork_rng():
                torch.manual_seed(0)
                is_mean, is_std = inception.compute()
        fid_value = float(fid.compute())
    return {"fid": fid_value, "inception_score": float(is_mean),
            "inception_score_std": float(is_std) if splits > 1 else 0.0, "is_splits": splits}


def compute_fid_is(samples: ImageSet, reference: ImageSet, net: FeatureNet, batch_size: int = 50) -> dict[str, Any]:
    """FID of ``samples`` vs ``reference`` and the Inception Score of ``samples``, in ``net``'s space.

    Reference images are brought to the samples' size first (centre crop + bicubic when they differ).
    """
    size = samples.size
    reference_features, _ = features_of(reference, net, batch_size, size)
    sample_features, sample_logits = features_of(samples, net, batch_size, size)
    return {**fid_is(sample_features, sample_logits, reference_features), "samples": len(samples),
            "reference": len(reference), "image_size": list(size)}
