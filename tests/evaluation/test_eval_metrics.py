"""``vpg eval fid`` and ``vpg eval sweep``: FID / IS through torchmetrics checked against a NumPy/SciPy reference
on the same features (a tiny random Inception-like network: nothing downloaded), the classifier-space FD of
the demo model, and the w x p sweep's table and plot."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from tests.helpers.evaluation import DEMO_FLAGS, run_here
from vpg_pipelines.evaluation.emoji_classifier import EmojiClassifier, extract_features, save_classifier
from vpg_pipelines.evaluation.fid import compute_fid_is
from vpg_pipelines.evaluation.frechet import frechet_distance
from vpg_pipelines.evaluation.image_sets import ImageSet

scipy_linalg = pytest.importorskip("scipy.linalg", reason="the NumPy/SciPy FID reference needs scipy (extra `test`)")
pytest.importorskip("torchmetrics", reason="FID / IS use torchmetrics (extras `eval`, `test`)")


class TinyInception(nn.Module):
    """Inception-shaped in miniature: a stem, one mixed block of parallel branches, global pooling -> features,
    a linear head -> logits. Randomly initialised from a fixed seed."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU())
        self.branch1 = nn.Conv2d(width, width, 1)
        self.branch3 = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(width, width, 1))
        self.head = nn.Linear(3 * width, classes)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1
        h = self.stem(x)
        mixed = torch.cat([self.branch1(h), self.branch3(h), self.pool(h)], 1)
        features = torch.tanh(mixed).mean(dim=(2, 3))  # no dead units: full-rank covariances
        return features, self.head(features)


@pytest.fixture(scope="module")
def net():
    return TinyInception().double()


def images(seed: int, n: int = 64, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def save_npz(path, arr):
    np.savez(path, arr_0=arr)
    return ImageSet(path)


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The ADM evaluator's formula: np.cov statistics and scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def reference_inception_score(logits: np.ndarray) -> float:
    """The ADM evaluator's IS with one split: exp(mean KL(p(y|x) || p(y)))."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), 1))))


def test_fid_of_a_set_against_itself_is_zero(net, tmp_path):
    real = images(0)
    same = save_npz(tmp_path / "a.npz", real)
    result = compute_fid_is(same, same, net, batch_size=16)
    features, _ = net(real)
    scale = float(torch.cov(features.T).trace())
    # float64 statistics: what is left is rounding of eigenvalues of the covariance product
    assert abs(result["fid"]) < 1e-9 * scale
    assert result["samples"] == result["reference"] == 64


def test_fid_and_is_match_a_numpy_scipy_reference_on_the_same_features(net, tmp_path):
    real, shifted = images(0), np.clip(images(1).astype(int) + 40, 0, 255).astype(np.uint8)
    result = compute_fid_is(save_npz(tmp_path / "s.npz", shifted), save_npz(tmp_path / "r.npz", real), net,
                            batch_size=10)
    (f_real, _), (f_shift, logits) = net(real), net(shifted)
    expected = reference_fid(f_shift.numpy(), f_real.numpy())
    assert expected > 1e-3  # the shift is visible in this feature space
    # both in float64; sqrtm (Schur) vs eigenvalues of the product agree to far better than 1e-6 relative
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    assert result["is_splits"] == 1
    assert result["inception_score"] == pytest.approx(reference_inception_score(logits.numpy()), rel=1e-9)


def test_reference_images_of_another_size_are_cropped_and_resized(net, tmp_path):
    samples = save_npz(tmp_path / "s.npz", images(2, side=16))
    folder = tmp_path / "real"
    folder.mkdir()
    for k, image in enumerate(images(3, n=8, side=24)):
        PIL.Image.fromarray(image[:, :20]).save(folder / f"{k:02d}.png")  # 24 x 20: centre-cropped to 20 x 20
    result = compute_fid_is(samples, ImageSet(folder), net, batch_size=5)
    assert result["reference"] == 8 and result["image_size"] == [16, 16] and np.isfinite(result["fid"])


# -- the command line, the demo model's classifier space ------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    save_classifier(EmojiClassifier(num_classes=30, width=8).eval(), path)
    return path


@pytest.fixture(scope="module")
def emoji_reference(tmp_path_factory):
    """An ``emoji32.npz``-format file (images, labels, heldout) of random images: its held-out part is the reference."""
    path = tmp_path_factory.mktemp("ref") / "emoji32.npz"
    rng = np.random.default_rng(5)
    n = 60
    np.savez(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 30,
             heldout=np.arange(n) % 2 == 0, augmented=np.zeros(n, bool))
    return path


def test_fid_command_in_classifier_space_equals_the_benchmark_fd(classifier_file, emoji_reference, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_here("sample", "imagenet", *DEMO_FLAGS, "--classes", "0-3", "--per-class", "2", "--out", str(run)) == 0
    out = tmp_path / "fid.json"
    assert run_here("fid", str(run), "--reference", str(emoji_reference), "--classifier", str(classifier_file),
                    "--out-json", str(out)) == 0
    assert "FD (classifier)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["samples"] == 8 and result["reference"] == 30  # the held-out half
    from vpg_pipelines.evaluation.emoji_classifier import load_classifier

    model = load_classifier(classifier_file)
    with np.load(emoji_reference) as d:
        real = d["images"][d["heldout"]]
    generated = np.stack([np.asarray(PIL.Image.open(p)) for p in sorted((run / "images").rglob("*.png"))])
    expected = frechet_distance(extract_features(generated, model), extract_features(real, model))
    # torchmetrics (eigenvalues of the product) vs benchmarks/quality.py's FD (symmetric square roots), float64
    assert result["fid"] == pytest.approx(expected, rel=1e-6)


def test_fid_command_needs_its_weights_file_and_says_what_to_install(tmp_path, capsys, emoji_reference):
    assert run_here("fid", str(emoji_reference), "--reference", str(emoji_reference), "--inception-weights",
                    str(tmp_path / "missing.pth")) == 2
    assert "--inception-weights" in capsys.readouterr().err
    try:
        import torch_fidelity  # noqa: F401
    except Exception:
        weights = tmp_path / "weights.pth"
        weights.write_bytes(b"not used")
        assert run_here("fid", str(emoji_reference), "--reference", str(emoji_reference), "--inception-weights",
                        str(weights)) == 2
        assert "torch-fidelity" in capsys.readouterr().err


# -- the sweep ----------------------------------------------------------------------------------------------------
def test_sweep_writes_a_table_and_a_metric_vs_w_plot(classifier_file, emoji_reference, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (extra `eval`)")
    out = tmp_path / "sweep"
    argv = ["sweep", *DEMO_FLAGS, "--classes", "0-2", "--per-class", "2", "--vpg-scale", "1", "2",
            "--vpg-corruption", "0.25", "0.5", "--reference", str(emoji_reference), "--classifier",
            str(classifier_file), "--out", str(out)]
    assert run_here(*argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["off", "w2-p0.25", "w2-p0.5"]  # w = 1 sampled once for every p
    assert rows["off"]["fd_delta"] == 0 and all(r["samples"] == 6 for r in rows.values())
    assert all(np.isfinite(r["fd"]) and 0 <= r["accuracy"] <= 1 for r in rows.values())
    for name in rows:
        settings = json.loads((out / name / "run.json").read_text())["settings"]
        assert settings["seed"] == 0 and settings["call"]["vpg_scale"] == rows[name]["w"]
    table = (out / "sweep.md").read_text()
    assert "| VPG off | 1 | — |" in table and "| w2-p0.5 | 2 | 0.5 |" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert run_here(*argv) == 0  # a rerun resumes: nothing left to sample
    assert capsys.readouterr().err.count("0 chunks (0 samples) to do") == 3
