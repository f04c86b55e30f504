"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula, any feature space).

torch only, float64 on the CPU (inside :func:`~vpg_pipelines.devices.host_compute`), eigen-decompositions; used
for the demo model's classifier-space FD.
"""

from __future__ import annotations

import numpy as np
import torch

from ..devices import host_compute


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64, CPU) of ``(N, D)`` features, N >= 2."""
    f = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats).cpu()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feats must be (N, D) with N >= 2, got shape {tuple(f.shape)}")
    with host_compute():
        f = f.double()
        mu = f.mean(0)
        centred = f - mu
        return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((cov + cov.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_from_stats(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """||mu_a - mu_b||² + tr(A) + tr(B) - 2 tr((A^½ B A^½)^½), all in float64 on the CPU."""
    mu_a, cov_a, mu_b, cov_b = (torch.as_tensor(t).cpu() for t in (mu_a, cov_a, mu_b, cov_b))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}")
    with host_compute():
        mu_a, cov_a, mu_b, cov_b = (t.double() for t in (mu_a, cov_a, mu_b, cov_b))
        sqrt_a = _psd_sqrt(cov_a)
        middle = sqrt_a @ cov_b @ sqrt_a
        # tr sqrt(A^½ B A^½) = sum of square roots of its (non-negative) eigenvalues
        tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
        value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_cross
        return max(float(value), 0.0)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))
