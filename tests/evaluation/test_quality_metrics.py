"""Fréchet distance and the classifier plumbing of benchmarks/quality_metrics.py (no dataset needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.quality_metrics import (
    as_image_batch,
    classifier_accuracy,
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    train_classifier,
)


def exact_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose empirical mean and unbiased covariance equal ``mean`` and ``cov`` exactly."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # empirical covariance = I
    return z @ torch.linalg.cholesky(cov).T + mean


def random_spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_exact_moments_helper():
    cov = random_spd(4, 0)
    x = exact_moments(50, torch.arange(4.0, dtype=torch.float64), cov, seed=1)
    mu, c = gaussian_stats(x)
    torch.testing.assert_close(mu, torch.arange(4.0, dtype=torch.float64))
    torch.testing.assert_close(c, cov)


def test_identical_sets_give_zero():
    x = exact_moments(200, torch.zeros(16, dtype=torch.float64), random_spd(16, 2), seed=3)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # a permutation of the same set is the same distribution estimate
    assert frechet_distance(x, x[torch.randperm(200)]) == pytest.approx(0.0, abs=1e-8)


def test_one_dimensional_analytic():
    # FD(N(m1, s1²), N(m2, s2²)) = (m1 - m2)² + (s1 - s2)²
    a = exact_moments(30, torch.tensor([1.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64), 0)
    b = exact_moments(40, torch.tensor([-2.0], dtype=torch.float64), torch.tensor([[9.0]], dtype=torch.float64), 1)
    assert frechet_distance(a, b) == pytest.approx(9.0 + 1.0, rel=1e-9)


def test_diagonal_analytic():
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float((mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum())
    got = frechet_distance_from_stats(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)  # 5 + 4 + 1 + 0 = 10


def test_scaled_covariance_analytic():
    # B = c² A (non-diagonal): tr sqrt(A^½ B A^½) = c tr A, so FD = |Δμ|² + (1 - c)² tr A
    cov = random_spd(8, 4)
    mu_a = torch.zeros(8, dtype=torch.float64)
    mu_b = torch.linspace(-1, 1, 8, dtype=torch.float64)
    a = exact_moments(100, mu_a, cov, seed=5)
    b = exact_moments(60, mu_b, 2.5**2 * cov, seed=6)
    expected = float(mu_b.square().sum() + (1 - 2.5) ** 2 * cov.trace())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_general_case_matches_matrix_square_root():
    # reference: tr sqrtm(A B) computed from the eigenvalues of A B (real, non-negative for SPD A, B)
    a_cov, b_cov = random_spd(6, 7), random_spd(6, 8)
    mu_a = torch.randn(6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mu_b = torch.zeros(6, dtype=torch.float64)
    eig = torch.linalg.eigvals(a_cov @ b_cov).real
    expected = float((mu_a - mu_b).square().sum() + a_cov.trace() + b_cov.trace() - 2 * eig.sqrt().sum())
    assert frechet_distance_from_stats(mu_a, a_cov, mu_b, b_cov) == pytest.approx(expected, rel=1e-9)


def test_symmetric_and_rank_deficient():
    g = torch.Generator().manual_seed(10)
    a = torch.randn(20, 32, generator=g, dtype=torch.float64)  # N < D: singular covariance
    b = torch.randn(50, 32, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab > 1.0
    assert ab == pytest.approx(ba, rel=1e-8)


def test_float32_numpy_input_and_shift_sensitivity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    assert frechet_distance(x, x + np.float32(2.0)) == pytest.approx(16.0, rel=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="feats"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))


def test_image_batch_layouts_agree():
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    ref = as_image_batch(nhwc)
    assert ref.shape == (3, 3, 32, 32) and ref.dtype == torch.float32
    torch.testing.assert_close(as_image_batch(torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255), ref)
    from PIL import Image

    torch.testing.assert_close(as_image_batch([Image.fromarray(im) for im in nhwc]), ref)
    assert as_image_batch(np.zeros((2, 64, 64, 3), dtype=np.uint8)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        as_image_batch(np.zeros((2, 32, 32, 4), dtype=np.uint8))


def colour_squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: a red or a blue square at a random place on white."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 32, 32, 3), 255, dtype=np.uint8)
    labels = rng.integers(0, 2, size=n)
    for im, y in zip(images, labels):
        r, c = rng.integers(2, 18, size=2)
        im[r : r + 12, c : c + 12] = (220, 30, 30) if y == 0 else (30, 30, 220)
    return images, labels


def test_classifier_learns_and_is_deterministic():
    torch.set_num_threads(1)
    x, y = colour_squares(96, 0)
    a = train_classifier(x, y, seed=3, epochs=3, width=8, batch_size=32, lr=1e-2)
    b = train_classifier(x, y, seed=3, epochs=3, width=8, batch_size=32, lr=1e-2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    x_test, y_test = colour_squares(64, 1)
    assert classifier_accuracy(x_test, y_test, a) >= 0.9
    feats = extract_features(x_test, a)
    assert feats.shape == (64, 128) and feats.dtype == torch.float64
