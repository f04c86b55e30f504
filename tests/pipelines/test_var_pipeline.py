"""VPGVARPipeline: the diffusers pipeline contract (mirrors diffusers' common pipeline tests)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.numerics import assert_same_steps, cfg_gain, record_draws, vpg_gain
from tests.helpers.shared import cuda_only, shared_path
from vpg_pipelines import VARTransformer, VPGVARPipeline
from vpg_pipelines.loading.checkpoint import CheckpointError, read_state_dict
from vpg_pipelines.sampling.next_scale import SamplerTrace


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_call_signature_and_components(var_pipe):
    params = inspect.signature(VPGVARPipeline.__call__).parameters
    for name in ("prompt", "class_labels", "num_images_per_prompt", "guidance_scale", "top_k", "top_p", "more_smooth",
                 "vpg_scale", "vpg_corruption", "vpg_mode", "vpg_refresh", "vpg_scales", "generator", "output_type",
                 "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs"):
        assert name in params
    assert set(var_pipe.components) == {"transformer", "vae"}
    assert var_pipe.num_timesteps == 4


def test_save_load_round_trip_is_bit_identical(var_pipe, tmp_path):
    before = var_pipe(class_labels=[1, 2], vpg_scale=3.0, generator=gens(0, 1), output_type="pt").images
    var_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VPGVARPipeline" and index["transformer"] == [
        "vpg_pipelines.models.var.transformer", "VARTransformer"]
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    assert index["id2label"]["3"] == "class 3"
    loaded = VPGVARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(class_labels=[1, 2], vpg_scale=3.0, generator=gens(0, 1), output_type="pt").images
    assert torch.equal(before, after)
    half = VPGVARPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    assert half.transformer.dtype == torch.float16 and half.vae.dtype == torch.float16


def test_dict_and_tuple_outputs_are_equivalent(var_pipe):
    a = var_pipe(class_labels=[4], generator=gens(3), output_type="np").images
    (b,) = var_pipe(class_labels=[4], generator=gens(3), output_type="np", return_dict=False)
    assert np.array_equal(a, b)


def test_output_types_agree(var_pipe):
    kw = dict(class_labels=[5, 6], vpg_scale=2.0)
    pt = var_pipe(**kw, generator=gens(0, 1), output_type="pt").images
    np_ = var_pipe(**kw, generator=gens(0, 1), output_type="np").images
    pil = var_pipe(**kw, generator=gens(0, 1), output_type="pil").images
    latent = var_pipe(**kw, generator=gens(0, 1), output_type="latent").images
    assert pt.shape == (2, 3, 64, 64) and np_.shape == (2, 64, 64, 3) and len(pil) == 2
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
    assert np.abs(pt.permute(0, 2, 3, 1).numpy() - np_).max() < 1e-6
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - np_[0]).max() <= 1 / 255 + 1e-6
    assert latent.shape == (2, 8, 4, 4)


# Batches against single images: another row count, so equal up to rounding. The single runs follow the
# batch's draws (numerics.record_draws) and must agree with them wherever a draw was not a near-tie;
# top_p = 0 because a top-p cut-off near a code's probability would be a tie the draw log cannot see.
def test_num_images_per_prompt_keeps_images_of_a_prompt_adjacent(var_pipe):
    kw = dict(vpg_scale=1.5, guidance_scale=1.5, top_p=0.0, output_type="pt")
    batch_trace, trace = SamplerTrace(), SamplerTrace()
    with record_draws() as reference:
        out = var_pipe(class_labels=[1, 2], num_images_per_prompt=3, generator=gens(*range(6)), trace=batch_trace,
                       **kw).images
    assert out.shape[0] == 6
    with record_draws(replay=reference) as replayed:
        single = var_pipe(class_labels=[2], generator=gens(3), trace=trace, **kw).images
    assert_same_steps(batch_trace, trace, replayed, cfg_gain(2.5) * vpg_gain(1.5), rows=slice(3, 4))
    torch.testing.assert_close(out[3:4], single, atol=1e-4, rtol=0)  # the same codes, decoded in another batch


def test_batch_equals_images_generated_one_by_one(var_pipe):
    kw = dict(vpg_scale=3.0, guidance_scale=4.0, top_p=0.0, output_type="pt")
    batch_trace = SamplerTrace()
    with record_draws() as reference:
        batch = var_pipe(class_labels=[1, 2, 3], generator=gens(10, 11, 12), trace=batch_trace, **kw).images
    for i, (label, seed) in enumerate(zip([1, 2, 3], [10, 11, 12])):
        trace = SamplerTrace()
        with record_draws(replay=reference) as replayed:
            one = var_pipe(class_labels=[label], generator=gens(seed), trace=trace, **kw).images
        assert_same_steps(batch_trace, trace, replayed, cfg_gain(5.0) * vpg_gain(3.0), rows=slice(i, i + 1))
        torch.testing.assert_close(batch[i : i + 1], one, atol=1e-4, rtol=0)


def test_deterministic_for_a_seed(var_pipe):
    a = var_pipe(class_labels=[9], generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = var_pipe(class_labels=[9], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(a, b)


def test_callback_sees_each_scale_and_can_edit_latents(var_pipe):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((i, t, kwargs["latents"].shape))
        if i == pipe.num_timesteps - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    out = var_pipe(class_labels=[1], output_type="latent", callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents"])
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][2] == (1, 8, 4, 4)
    assert out.images.abs().sum() == 0


def test_callback_can_stop_early(var_pipe):
    calls = []

    def callback(pipe, i, t, kwargs):
        calls.append(i)
        if i == 1:
            pipe._interrupt = True
        return {}

    out = var_pipe(class_labels=[1], output_type="pt", callback_on_step_end=callback)
    assert calls == [0, 1] and out.images.shape == (1, 3, 64, 64)
    assert not var_pipe.interrupt or var_pipe.interrupt  # the flag is reset at the next call
    var_pipe(class_labels=[1], output_type="pt", callback_on_step_end=lambda *a: {})
    assert not var_pipe.interrupt


def test_editing_latents_in_a_callback_changes_later_scales(var_pipe):
    def zero_after_first(pipe, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 0 else {}

    kw = dict(class_labels=[1], top_k=1, top_p=0.0, output_type="pt")
    assert not torch.equal(var_pipe(**kw).images, var_pipe(**kw, callback_on_step_end=zero_after_first).images)


def test_bfloat16_runs_on_cpu():
    root = shared_path("parity", "var")
    cfg = json.loads((root / "config.json").read_text())
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=cfg,
                                        torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16
    images = pipe(class_labels=[1], vpg_scale=2.0, generator=gens(0), output_type="pt").images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


@pytest.fixture(scope="module")
def imagenet_pipe(var_pipe):
    """A 1000-class model (random weights) so that ImageNet names resolve."""
    config = dict(var_pipe.transformer.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")} | {"num_classes": 1000}
    torch.manual_seed(0)
    pipe = VPGVARPipeline(VARTransformer(**config).eval(), var_pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_class_names_resolve_case_insensitively(imagenet_pipe):
    assert imagenet_pipe.get_label_ids(["golden retriever", "Golden Retriever", "tench", "Tinca tinca"]) == [
        207, 207, 0, 0]
    out = imagenet_pipe(prompt=["golden retriever", 3], generator=gens(0, 1), output_type="pt")
    assert out.images.shape[0] == 2


def test_unknown_class_name_suggests_close_matches(imagenet_pipe):
    with pytest.raises(ValueError, match="golden retriever") as info:
        imagenet_pipe(prompt="golden retreiver")
    assert "prompt" in str(info.value)


# -- bad input: every case either runs or raises ValueError/TypeError naming the argument ----------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=6), st.lists(st.integers(-2, 12), max_size=3))
ARGS = {
    "class_labels": st.one_of(ANY, st.lists(st.integers(-3, 12), min_size=0, max_size=3)),
    "num_images_per_prompt": ANY,
    "guidance_scale": ANY,
    "top_k": ANY,
    "top_p": ANY,
    "more_smooth": ANY,
    "vpg_scale": ANY,
    "vpg_corruption": ANY,
    "vpg_mode": st.one_of(ANY, st.sampled_from(["full", "token", "position", "codebook"])),
    "vpg_refresh": st.one_of(ANY, st.sampled_from(["persistent", "resample"])),
    "vpg_scales": st.one_of(ANY, st.sampled_from(["all", "semantic"]), st.lists(st.integers(-1, 5), max_size=3)),
    "output_type": st.one_of(ANY, st.sampled_from(["pt", "np", "latent"])),
    "generator": st.one_of(st.none(), st.integers(0, 3).map(lambda n: gens(*range(n)))),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=ARGS))
def test_bad_input_never_crashes_deep_inside(var_pipe, kwargs):
    kwargs = dict(kwargs)
    kwargs.setdefault("class_labels", [1])
    try:
        var_pipe(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        named = [name for name in kwargs if f"`{name}`" in message]
        assert named, f"error does not name an argument: {message!r} for {kwargs}"


def test_mismatched_generator_list_is_rejected(var_pipe):
    with pytest.raises(ValueError, match="generators of length 1"):
        var_pipe(class_labels=[1, 2], generator=gens(0))


# -- checkpoints ----------------------------------------------------------------------------------
def test_truncated_and_foreign_checkpoints_give_clear_errors(tmp_path):
    root = shared_path("parity", "var")
    cut = tmp_path / "var.safetensors"
    cut.write_bytes((root / "var.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        VPGVARPipeline.from_official(cut, root / "vqvae.safetensors")
    with pytest.raises(CheckpointError, match="not a VAR transformer checkpoint"):
        VPGVARPipeline.from_official(root / "vqvae.safetensors", root / "vqvae.safetensors")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="could not read"):
        read_state_dict(text)


# -- command line ---------------------------------------------------------------------------------
def test_cli_generate_compare_and_convert(var_pipe, tmp_path, capsys):
    from vpg_pipelines.cli import main

    root = shared_path("parity", "var")
    config = tmp_path / "config.json"
    config.write_text((root / "config.json").read_text())
    folder = tmp_path / "converted"
    assert main(["convert", "--var", str(root / "var.safetensors"), "--vae", str(root / "vqvae.safetensors"),
                 "--config", str(config), "--out", str(folder)]) == 0
    assert (folder / "model_index.json").exists()
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(folder), "--prompt", "3", "--prompt", "class 4", "--vpg-scale", "3",
                 "--seed", "0", "--compare", "--out", str(out), "--device", "cpu"]) == 0
    grid = PIL.Image.open(out)
    assert grid.width > 2 * 128 and grid.height > 2 * 128
    assert main(["generate", "--model", str(folder), "--prompt", "no such class", "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["convert", "--var", str(root / "var.safetensors"), "--vae", str(root / "vqvae.safetensors"),
                 "--config", str(config), "--out", str(folder)]) == 2  # never overwrites


# -- accelerate offload ------------------------------------------------------------------------------
@pytest.mark.parametrize("hooks", ["sequential", "model"])
def test_offload_hooks_on_cpu_give_the_same_images(hooks):
    """accelerate's hooks with the CPU as execution device: sequential offload keeps weights on meta until
    their module's forward runs (so nothing in the sampling path reads a weight outside a forward), and
    model offload re-sends every call's arguments (so the KV cache object must survive `send_to_device`)."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    root = shared_path("parity", "var")
    cfg = json.loads((root / "config.json").read_text())

    def make():
        pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=cfg)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    kw = dict(class_labels=[1, 2], vpg_scale=3.0, vpg_mode="codebook", more_smooth=True, output_type="pt")
    reference = make()(**kw, generator=gens(0, 1)).images
    pipe = make()
    for module in (pipe.transformer, pipe.vae):
        if hooks == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            cpu_offload_with_hook(module, execution_device=torch.device("cpu"))
    if hooks == "sequential":
        assert pipe.transformer.head.weight.device.type == "meta"
    images = pipe(**kw, generator=gens(0, 1)).images
    assert torch.equal(images, reference)


# -- accelerate offload (needs a GPU) ---------------------------------------------------------------
needs_cuda = cuda_only("CPU offload needs a CUDA GPU (none found)")


@needs_cuda
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_gives_the_same_images(offload):
    root = shared_path("parity", "var")
    cfg = json.loads((root / "config.json").read_text())

    def make():
        pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=cfg)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    kw = dict(class_labels=[1, 2], vpg_scale=3.0, top_k=1, top_p=0.0, output_type="pt")
    reference = make().to("cuda")(**kw, generator=gens(0, 1)).images
    pipe = make()
    getattr(pipe, f"enable_{offload}_cpu_offload")()
    for _ in range(2):  # twice: hooks are re-armed after a call
        images = pipe(**kw, generator=gens(0, 1)).images
        # the same device and shapes; 1e-4 leaves room for GPU kernels that are not run-to-run deterministic
        torch.testing.assert_close(images, reference, atol=1e-4, rtol=0)
