"""VAR multi-scale VQVAE: parity with the official code, checkpoint layout, and internal consistency."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from tests.helpers.numerics import layout_atol
from tests.helpers.shared import shared_path
from vpg_pipelines.loading.checkpoint import CheckpointError, load_strict, read_state_dict
from vpg_pipelines.models.var.vqvae import VARVQVAE

ATOL = 1e-4


@pytest.fixture(scope="module")
def parity_dir():
    return shared_path("parity", "var")


@pytest.fixture(scope="module")
def vqvae(parity_dir) -> VARVQVAE:
    config = json.loads((parity_dir / "config.json").read_text())["vqvae"]
    model = VARVQVAE(**config)
    load_strict(model, read_state_dict(parity_dir / "vqvae.safetensors"), what="parity vqvae")
    return model


@pytest.fixture(scope="module")
def cases(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(str(parity_dir / "cases.safetensors"))


def _reference_indices(cases) -> list[torch.Tensor]:
    count = sum(1 for key in cases if key.startswith("vqvae.indices.scale"))
    return [cases[f"vqvae.indices.scale{k}"] for k in range(count)]


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    print(f"[parity] vqvae {name}: max abs error {err:.3e}")
    return err


# ------------------------------------------------------------------------------------------ parity


@torch.no_grad()
def test_parity_encoder_features(vqvae, cases):
    feats = vqvae.encode_features(cases["vqvae.input_image"])
    assert _report("encoder_features", feats, cases["vqvae.encoder_features"]) <= ATOL


@torch.no_grad()
def test_parity_indices_exact(vqvae, cases, monkeypatch):
    """Nearest-code indices equal the official ones; every pick is far enough from a tie to be the same
    from features within the measured error of the official ones (on any machine)."""
    gaps = []
    nearest = vqvae._nearest_code

    def recording(z, codebook):
        dist = (z[:, None] - codebook[None]).square().sum(-1)  # the distances the pick minimises
        two = dist.topk(2, dim=1, largest=False).values
        gaps.append(((two[:, 1] - two[:, 0]).min().item(), z.norm(dim=1).max().item()))
        return nearest(z, codebook)

    monkeypatch.setattr(vqvae, "_nearest_code", recording)
    indices = vqvae.encode_to_indices(cases["vqvae.input_image"])
    feature_err = (vqvae.encode_features(cases["vqvae.input_image"]) - cases["vqvae.encoder_features"]).abs().max()
    expected = _reference_indices(cases)
    assert not vqvae.using_znorm  # the bound below is for Euclidean distances
    codebook_norm = vqvae.quantize.embedding.weight.norm(dim=1).max().item()
    for gap, z_norm in gaps:
        # |z - c|^2 moves by at most 2 (|z| + |c|) |dz| + |dz|^2, with |dz| <= sqrt(C) * (error + rounding)
        dz = vqvae.Cvae**0.5 * (feature_err.item() + layout_atol(z_norm))
        assert gap > 2 * (2 * (z_norm + codebook_norm) * dz + dz * dz), f"a code pick within {gap:.2e} of a tie"
    assert len(indices) == len(expected) == len(vqvae.config.v_patch_nums)
    for k, (got, want) in enumerate(zip(indices, expected)):
        assert got.dtype == torch.long
        mismatches = int((got != want).sum()) if got.shape == want.shape else -1
        print(f"[parity] vqvae indices.scale{k}: {mismatches} mismatching entries")
        assert torch.equal(got, want), f"scale {k}: indices differ"


@torch.no_grad()
def test_parity_reconstruction_from_indices(vqvae, cases):
    image = vqvae.indices_to_image(_reference_indices(cases))
    assert _report("reconstruction_from_indices", image, cases["vqvae.reconstruction_from_indices"]) <= ATOL
    assert image.min() >= -1 and image.max() <= 1


@torch.no_grad()
def test_parity_teacher_forcing_input(vqvae, cases):
    tf_input = vqvae.teacher_forcing_input(_reference_indices(cases))
    assert _report("teacher_forcing_input", tf_input, cases["var.teacher_forcing_input"]) <= ATOL


# ------------------------------------------------------------------------------------------ layout


def test_manifest_keys_and_shapes():
    manifest = json.loads(shared_path("spec", "manifests", "var_vqvae.json").read_text())
    with torch.device("meta"):
        model = VARVQVAE(**manifest["config"]["vqvae"])
    assert (model.config.vocab_size, model.Cvae, model.config.ch) == (4096, 32, 160)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: list(v) for k, v in manifest["state_dict"].items()}
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert wrong == {}


@pytest.mark.parametrize(
    ("share", "expected_phi_keys"),
    [
        (0, [f"quantize.quant_resi.{i}.weight" for i in range(3)]),
        (1, ["quantize.quant_resi.qresi.weight"]),
        (2, ["quantize.quant_resi.qresi_ls.0.weight", "quantize.quant_resi.qresi_ls.1.weight"]),
    ],
)
def test_phi_key_layouts_follow_share_quant_resi(share, expected_phi_keys):
    with torch.device("meta"):
        model = VARVQVAE(vocab_size=16, z_channels=4, ch=32, share_quant_resi=share, v_patch_nums=(1, 2, 4))
    phi_keys = sorted(
        k for k in model.state_dict() if k.startswith("quantize.quant_resi") and k.endswith("weight")
    )
    assert phi_keys == expected_phi_keys


def test_phi_choice_per_scale_for_released_schedule():
    with torch.device("meta"):
        model = VARVQVAE()
    bank = model.quantize.quant_resi
    chosen = [list(bank.qresi_ls).index(bank.select(k, 10)) for k in range(10)]
    # nearest of ticks linspace(1/12, 11/12, 4) = (3, 13, 23, 33)/36 to k/9; k = 2 (8/36) is an exact
    # tie between ticks 0 and 1 that float rounding in the official numpy code resolves to tick 1
    assert chosen == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_strict_load_rejects_a_foreign_checkpoint(parity_dir):
    model = VARVQVAE(vocab_size=32, z_channels=8, ch=32, v_patch_nums=(1, 2, 3, 4))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_strict(model, read_state_dict(parity_dir / "vqvae.safetensors"))


def test_config_round_trip(tmp_path, vqvae):
    vqvae.save_config(tmp_path)
    rebuilt = VARVQVAE.from_config(VARVQVAE.load_config(tmp_path))
    assert rebuilt.config.v_patch_nums == vqvae.config.v_patch_nums
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in vqvae.state_dict().items()
    }


# ------------------------------------------------------------------------------------------ properties


def _f_hat_by_steps(model: VARVQVAE, indices: list[torch.Tensor]) -> torch.Tensor:
    """Rebuild f_hat the way the sampler does: one next_scale_input call per scale."""
    patch_nums = model.config.v_patch_nums
    batch = indices[0].shape[0]
    f_hat = torch.zeros(batch, model.Cvae, patch_nums[-1], patch_nums[-1])
    for k, (pn, idx) in enumerate(zip(patch_nums, indices)):
        h = model(idx).transpose(1, 2).reshape(batch, model.Cvae, pn, pn)
        f_hat, nxt = model.next_scale_input(k, f_hat, h)
        if k + 1 < len(patch_nums):
            assert nxt.shape == (batch, model.Cvae, patch_nums[k + 1], patch_nums[k + 1])
        else:
            assert nxt is None
    return f_hat


@torch.no_grad()
def test_round_trip_matches_stepwise_decode(vqvae, cases):
    indices = vqvae.encode_to_indices(cases["vqvae.input_image"])
    f_hat = _f_hat_by_steps(vqvae, indices)
    # the same sums from differently laid-out code maps (contiguous vs transposed): equal up to rounding
    reference = vqvae.indices_to_f_hat(indices)
    torch.testing.assert_close(f_hat, reference, atol=layout_atol(reference), rtol=0)
    image = vqvae.indices_to_image(indices)
    torch.testing.assert_close(vqvae.decode_latent(f_hat), image, atol=layout_atol(image), rtol=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3))
def test_teacher_forcing_equals_stepwise_inputs(vqvae, seed, batch):
    gen = torch.Generator().manual_seed(seed)
    patch_nums = vqvae.config.v_patch_nums
    indices = [torch.randint(0, vqvae.vocab_size, (batch, pn * pn), generator=gen) for pn in patch_nums]
    f_hat = torch.zeros(batch, vqvae.Cvae, patch_nums[-1], patch_nums[-1])
    stepwise = []
    with torch.no_grad():
        for k, (pn, idx) in enumerate(zip(patch_nums, indices)):
            h = vqvae(idx).transpose(1, 2).reshape(batch, vqvae.Cvae, pn, pn)
            f_hat, nxt = vqvae.next_scale_input(k, f_hat, h)
            if nxt is not None:
                stepwise.append(nxt.flatten(2).transpose(1, 2))
        tf_input = vqvae.teacher_forcing_input(indices)
    assert tf_input.shape == (batch, sum(pn * pn for pn in patch_nums) - 1, vqvae.Cvae)
    # the same steps from differently laid-out code maps: equal up to rounding
    stepwise = torch.cat(stepwise, dim=1)
    torch.testing.assert_close(tf_input, stepwise, atol=layout_atol(stepwise), rtol=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_soft_lookup_of_one_hot_equals_lookup(vqvae, seed):
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, vqvae.vocab_size, (2, 7), generator=gen)
    probs = torch.nn.functional.one_hot(indices, vqvae.vocab_size).float()
    with torch.no_grad():
        torch.testing.assert_close(vqvae.soft_lookup(probs), vqvae(indices), atol=0, rtol=0)


@torch.no_grad()
def test_soft_lookup_is_a_convex_mixture(vqvae):
    probs = torch.zeros(1, vqvae.vocab_size)
    probs[0, 3], probs[0, 10] = 0.25, 0.75
    expected = 0.25 * vqvae(torch.tensor([3])) + 0.75 * vqvae(torch.tensor([10]))
    torch.testing.assert_close(vqvae.soft_lookup(probs), expected)


@torch.no_grad()
def test_patch_nums_override(vqvae, cases):
    indices = vqvae.encode_to_indices(cases["vqvae.input_image"], patch_nums=(2, 4))
    assert [tuple(i.shape) for i in indices] == [(2, 4), (2, 16)]
    image = vqvae.indices_to_image(indices)
    assert image.shape == cases["vqvae.input_image"].shape


def test_bad_arguments_raise_value_errors(vqvae, cases):
    with pytest.raises(ValueError, match="patch_nums"):
        vqvae.encode_to_indices(cases["vqvae.input_image"], patch_nums=(1, 2, 8))
    with pytest.raises(ValueError, match="scale_index"):
        vqvae.next_scale_input(4, torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        vqvae.soft_lookup(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="square"):
        vqvae.indices_to_image([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)])


@torch.no_grad()
def test_sequential_offload_never_reads_weights_outside_a_forward(vqvae, cases):
    """With accelerate's sequential offload, parameters sit on meta until their module runs."""
    from accelerate import cpu_offload

    offloaded = copy.deepcopy(vqvae)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert offloaded.quantize.embedding.weight.device.type == "meta"
    image = cases["vqvae.input_image"]
    indices = offloaded.encode_to_indices(image)
    for got, want in zip(indices, vqvae.encode_to_indices(image)):
        assert torch.equal(got, want)
    torch.testing.assert_close(offloaded.indices_to_image(indices), vqvae.indices_to_image(indices))
    probs = torch.softmax(torch.randn(2, 3, vqvae.vocab_size), dim=-1)
    torch.testing.assert_close(offloaded.soft_lookup(probs), vqvae.soft_lookup(probs))
    torch.testing.assert_close(_f_hat_by_steps(offloaded, indices), _f_hat_by_steps(vqvae, indices))


@torch.no_grad()
def test_cpu_decode_runs_channels_last_and_returns_contiguous_images(vqvae):
    """The CPU decode takes oneDNN's channels-last path (faster) and hands back an ordinary NCHW tensor,
    equal to the NCHW decode up to rounding (the convolutions sum in another order)."""
    f_hat = torch.randn(2, vqvae.Cvae, 4, 4, generator=torch.Generator().manual_seed(0))
    image = vqvae.decode_latent(f_hat)
    assert image.is_contiguous()
    nchw = vqvae.decoder(vqvae.post_quant_conv(f_hat)).clamp(-1, 1)
    # every convolution sums in another order under the other layout, and the decoder stacks them: the
    # rounding of each (a layout tolerance of its output) adds up along the stack
    convs = 1 + sum(isinstance(m, torch.nn.Conv2d) for m in vqvae.decoder.modules())
    torch.testing.assert_close(image, nchw, atol=layout_atol(nchw, gain=convs), rtol=0)
