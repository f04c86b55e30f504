"""The VAR node chain without ComfyUI (the node classes on the stand-in schema API): loading, clone
semantics, chain errors, conditioning, sampling equal to the pipeline, progress with previews, Cancel,
guidance maps equal to the sampler trace."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from comfy_nodes import guidance_map, host, sources
from comfy_nodes.conditioning import ClassConditioning, VPGClassConditioning
from comfy_nodes.guidance import VPGCFG, VPGGuidanceMap, VPGPrefixGuidance, parse_scales
from comfy_nodes.loader import VPGModelLoader
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGSampler
from comfy_nodes.sampling import generators
from comfy_nodes.sources import DEMO_CHOICE, NO_COMPANION
from tests.helpers.comfy import load, run
from tests.helpers.numerics import cfg_gain, record_draws, trace_atol, vpg_gain
from tests.helpers.shared import shared_path
from vpg_pipelines.sampling.next_scale import SamplerTrace

DEMO_SETTINGS = {"top_k": 0, "top_p": 0.95}


def _no_files(name):
    raise FileNotFoundError(f"Model in folder 'vpg' with filename '{name}' not found.")


def cfg(model, value):
    return run(VPGCFG, model=model, cfg=value)[0]


def prefix(model, vpg_scale=1.5, corruption=0.5, mode="full", refresh="persistent", scales="all"):
    return run(VPGPrefixGuidance, model=model, vpg_scale=vpg_scale, corruption=corruption, mode=mode,
               refresh=refresh, scales=scales)[0]


def classes(model, text):
    return run(VPGClassConditioning, model=model, classes=text)[0]


def sample(model, cond, seed, batch_size=1, top_k=0, top_p=0.95):
    """The VPG Sampler's (images, guidance maps)."""
    return run(VPGSampler, model=model, conditioning=cond, seed=seed, batch_size=batch_size, top_k=top_k,
               top_p=top_p)


@pytest.fixture(scope="module")
def demo() -> VPGModel:
    pipe, kind = load(DEMO_CHOICE, NO_COMPANION, _no_files)
    return VPGModel(pipe, kind, DEMO_CHOICE)


@pytest.fixture(scope="module")
def guided(demo) -> VPGModel:
    return prefix(cfg(demo, 3.0))


# -- loading -------------------------------------------------------------------------------------------
def test_loader_choices_offer_demo_folders_by_index_and_loose_checkpoints():
    files = ["var_d16.pth", "vae_ch160v4096z32.pth", "my_run/model_index.json", "my_run/transformer/x.safetensors",
             "my_run/vae/y.safetensors", "notes.txt", "sub/var_d20.pth"]
    assert sources.loader_choices(files) == [
        DEMO_CHOICE, "my_run/model_index.json", "sub/var_d20.pth", "vae_ch160v4096z32.pth", "var_d16.pth"]
    assert sources.companion_choices(files)[0] == NO_COMPANION
    assert "notes.txt" not in sources.companion_choices(files)


def test_demo_loads_as_var_kind_with_progress_bar_off(demo):
    assert demo.kind.name == "var" and demo.kind.conditioning == "class"
    assert demo.pipeline.num_scales == len(demo.pipeline.transformer.config.patch_nums) == 6
    assert demo.pipeline._progress_bar_config.get("disable") is True


def test_loader_node_loads_the_demo_and_refuses_a_vae_it_cannot_use(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "folder_list", lambda folder: [tmp_path] if folder == host.MODELS else [])
    torch.save({}, tmp_path / "vae_ch160v4096z32.pth")
    widgets = dict(text_encoder="none", dtype="fp32", quantization="none", offload="auto")
    (model,) = run(VPGModelLoader, model_name=DEMO_CHOICE, vae_file="none", **widgets)
    assert isinstance(model, VPGModel) and model.kind.name == "var" and model.source == DEMO_CHOICE
    with pytest.raises(ValueError, match=r"^VPG Load Model: the bundled demo brings its own VAE and cannot use "
                                         r"`vae_file` 'vae_ch160v4096z32.pth'; set `vae_file` to none$"):
        run(VPGModelLoader, model_name=DEMO_CHOICE, vae_file="vae_ch160v4096z32.pth", **widgets)
    with pytest.raises(ValueError, match=r"^VPG Load Model: `offload` must be one of 'auto', 'none'"):
        run(VPGModelLoader, model_name=DEMO_CHOICE, vae_file="none", **{**widgets, "offload": "disk"})


def test_saved_folder_round_trip_gives_the_same_images(demo, tmp_path):
    demo.pipeline.save_pretrained(tmp_path / "run")
    pipe, kind = load("run/model_index.json", NO_COMPANION, lambda n: tmp_path / n)
    model = VPGModel(pipe, kind, "run/model_index.json")
    a = sample(cfg(demo, 3.0), classes(demo, "plant"), 5)[0]
    b = sample(cfg(model, 3.0), classes(model, "plant"), 5)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\(a saved pipeline folder\) brings its own VAE and cannot use `vae_file`"):
        load("run/model_index.json", "run/vae/diffusion_pytorch_model.safetensors",
                            lambda n: tmp_path / n)


def test_official_pair_loads_with_a_sidecar_config(tmp_path):
    root = shared_path("parity", "var")
    shutil.copy(root / "var.safetensors", tmp_path / "var_d2.safetensors")
    shutil.copy(root / "vqvae.safetensors", tmp_path / "vae_tiny.safetensors")
    resolve = lambda n: tmp_path / n  # noqa: E731
    with pytest.raises(ValueError, match="vae_file"):
        load("var_d2.safetensors", NO_COMPANION, resolve)
    with pytest.raises(ValueError, match="patch_nums"):  # not inferable without the sidecar
        load("var_d2.safetensors", "vae_tiny.safetensors", resolve)
    shutil.copy(root / "config.json", tmp_path / "var_d2.json")
    pipe, kind = load("var_d2.safetensors", "vae_tiny.safetensors", resolve)
    config = json.loads((root / "config.json").read_text())
    assert kind.name == "var" and list(pipe.transformer.config.patch_nums) == config["var"]["patch_nums"]


def test_loader_errors_name_the_input(tmp_path):
    with pytest.raises(ValueError, match="`model_name` 'missing.pth' was not found"):
        load("missing.pth", NO_COMPANION, _no_files)
    torch.save({}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="`model_name` 'weights.pth' is not named like an official checkpoint"):
        load("weights.pth", NO_COMPANION, lambda n: tmp_path / n)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="holds a StableDiffusionPipeline, which vpg_pipelines cannot load"):
        load("other/model_index.json", NO_COMPANION, lambda n: tmp_path / n)
    with pytest.raises(ValueError, match="^VPG Load Model: `dtype` must be one of 'fp32', 'bf16', 'fp16', got 'fp8'"):
        run(VPGModelLoader, model_name=DEMO_CHOICE, vae_file="none", text_encoder="none", dtype="fp8",
            quantization="none", offload="auto")


# -- the guidance chain ----------------------------------------------------------------------------------
def test_guidance_nodes_return_patched_copies_and_never_mutate_their_input(demo):
    with_cfg = cfg(demo, 2.0)
    with_vpg = prefix(with_cfg, 2.5, 0.25, "token", "resample", "1-3")
    assert demo.cfg is None and demo.prefix is None
    assert with_cfg.cfg.guidance_scale == 2.0 and with_cfg.cfg.schedule == "linear" and with_cfg.prefix is None
    vpg = with_vpg.prefix
    assert (vpg.guidance_scale, vpg.corruption, vpg.mode, vpg.refresh) == (2.5, 0.25, "token", "resample")
    assert list(with_vpg.prefix.scales) == [1, 2, 3]
    assert with_vpg.pipeline is demo.pipeline and with_vpg.cfg is with_cfg.cfg


def test_incompatible_chains_raise_readable_errors(demo):
    with pytest.raises(ValueError, match="^VPG CFG: this model already has guidance"):
        cfg(cfg(demo, 1.0), 2.0)
    with pytest.raises(ValueError, match="^VPG Prefix Guidance: this model already has Prefix Guidance"):
        prefix(prefix(demo))
    with pytest.raises(ValueError, match="^VPG CFG: `model` must come from a VPG Load Model"):
        cfg("not a model", 1.0)
    with pytest.raises(ValueError, match="^VPG Prefix Guidance: `mode` must be one of 'full', 'token', 'position', "
                                         "'codebook', got 'blur'$"):
        prefix(demo, mode="blur")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"corruption": float("nan")}, r"`corruption` must be a number in [0, 1], got nan"),
    ({"corruption": 1.5}, r"`corruption` must be a number in [0, 1], got 1.5"),
    ({"vpg_scale": float("inf")}, r"`vpg_scale` must be a number in [0, 20], got inf"),
    ({"scales": "2, 9"}, r"`scales` asks for scale 9, but this model has 6 scales (0-5); use 'all', 'semantic' or "
                         r"indices in 0-5"),
    ({"scales": "1-100"}, r"`scales` asks for scale 6-100, but this model has 6 scales (0-5)"),
    ({"scales": "1;x"}, r"`scales` must be 'all', 'semantic' or scale indices like '1,2,3' or '1-4', got '1;x'"),
])
def test_prefix_guidance_errors_speak_the_nodes_widgets(demo, kwargs, message):
    with pytest.raises(ValueError) as err:
        prefix(demo, **kwargs)
    assert str(err.value).startswith(f"VPG Prefix Guidance: {message}")
    assert "vpg_corruption" not in str(err.value) and "10000" not in str(err.value)


@pytest.mark.parametrize(("text", "parsed"), [("all", "all"), (" Semantic ", "semantic"), ("3,1", [1, 3]),
                                              ("1-3, 5", [1, 2, 3, 5]), ("2 4", [2, 4])])
def test_parse_scales(text, parsed):
    assert parse_scales("VPG Prefix Guidance", text) == parsed


@pytest.mark.parametrize("text", ["", "1;x", "4-2", "-1"])
def test_parse_scales_rejects(text):
    with pytest.raises(ValueError, match="^VPG Prefix Guidance: `scales`"):
        parse_scales("VPG Prefix Guidance", text)


# -- conditioning ---------------------------------------------------------------------------------------
def test_class_names_and_ids_map_to_label_ids(demo):
    cond = classes(demo, "Face-Happy, 3\nplant")
    assert cond.class_ids == (0, 3, 14)
    assert cond.names == ("face-happy", "face-creature", "plant")
    assert cond.num_classes == 30 and cond.source == DEMO_CHOICE


def test_conditioning_errors_are_readable(demo):
    with pytest.raises(ValueError, match="^VPG Class Conditioning: .*Did you mean: 'face-happy'"):
        classes(demo, "face-hapy")
    with pytest.raises(ValueError, match=r"^VPG Class Conditioning: class id 30 is out of range \[0, 29\]"):
        classes(demo, "30")
    with pytest.raises(ValueError, match="^VPG Class Conditioning: `classes` is empty"):
        classes(demo, " , \n")


# -- sampling -------------------------------------------------------------------------------------------
def test_sample_equals_the_pipeline_with_per_image_seeds(demo, guided):
    cond = classes(demo, "face-happy, plant")
    out = sample(guided, cond, seed=11, batch_size=2)[0]
    gens = [torch.Generator().manual_seed(11 + i) for i in range(4)]
    ref = demo.pipeline(class_labels=[0, 14], num_images_per_prompt=2, guidance_scale=3.0, vpg_scale=1.5,
                        generator=gens, output_type="pt", **DEMO_SETTINGS).images
    assert out.shape == (4, 32, 32, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, ref.permute(0, 2, 3, 1))


def test_first_image_does_not_depend_on_batch_size(guided, demo):
    """Batch 3 vs 1 runs other row counts, so it is equal up to rounding: the single run follows the batch's
    draws and must agree with them except at near-ties (tests/helpers/numerics.py). No top-p: a cut-off near a
    probability would be a tie that the draw log cannot see."""
    cond = classes(demo, "hand")
    with record_draws() as reference:
        three = sample(guided, cond, seed=3, batch_size=3, top_p=0.0)[0]
    with record_draws(replay=reference) as replayed:
        one = sample(guided, cond, seed=3, batch_size=1, top_p=0.0)[0]
    trace = SamplerTrace()  # the node's pipeline call, traced for the logits' magnitude
    demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=3.0, vpg_scale=1.5, generator=generators(3, 1),
                  output_type="latent", trace=trace, top_k=0, top_p=0.0)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(1 + 3.0) * vpg_gain(1.5)))  # VAR's ramp ends at 1 + cfg
    torch.testing.assert_close(one[0], three[0], atol=1e-4, rtol=0)  # the same codes, decoded in another batch


def test_vpg_changes_the_images_of_the_same_seed(demo, guided):
    cond = classes(demo, "face-happy, animal-mammal, transport")
    assert not torch.equal(sample(cfg(demo, 3.0), cond, seed=7)[0], sample(guided, cond, seed=7)[0])


def test_progress_ticks_once_per_scale_with_a_preview(demo, guided, progress_hook):
    sample(guided, classes(demo, "plant"), 0, batch_size=2)
    assert [(v, t) for v, t, _ in progress_hook] == [(k, 6) for k in range(1, 7)]
    for _, _, (fmt, image, size) in progress_hook:
        assert fmt == "JPEG" and image.size == (32, 32) and size == 512
    assert progress_hook[0][2][1].tobytes() != progress_hook[-1][2][1].tobytes()  # the partial image sharpens


def test_no_preview_is_decoded_when_nobody_watches(demo, guided):
    decoded = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(guided.pipeline, "preview_image", lambda *a: decoded.append(1))
        sample(guided, classes(demo, "plant"), 0)
    assert decoded == []


def test_cancel_between_scales_stops_sampling_and_returns_nothing(demo, guided, progress_hook):
    host.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: (progress_hook.append(value),
                                                     value == 2 and host.interrupt_current_processing(True)))
    with pytest.raises(host.InterruptProcessingException):
        sample(guided, classes(demo, "plant"), 0)
    assert progress_hook == [1, 2]


def test_sampler_rejects_conditioning_of_another_model_and_bad_values(demo, guided):
    foreign = ClassConditioning((0,), ("x",), 1000, "var_d16.pth")
    with pytest.raises(ValueError, match="^VPG Sampler: the conditioning was made for var_d16.pth"):
        sample(guided, foreign, 0)
    with pytest.raises(ValueError, match="^VPG Sampler: `conditioning` must come from a VPG Class Conditioning"):
        sample(guided, "face-happy", 0)
    cond = classes(demo, "plant")
    with pytest.raises(ValueError, match=r"^VPG Sampler: `top_p` must be a number in \[0, 1\], got 1.5$"):
        sample(guided, cond, 0, top_p=1.5)
    with pytest.raises(ValueError, match=r"^VPG Sampler: `seed` must be a whole number in \[0, 18446744073709551615\]"):
        sample(guided, cond, -1)


# -- guidance maps --------------------------------------------------------------------------------------
def test_guidance_maps_match_the_sampler_trace(demo, guided):
    cond = classes(demo, "face-happy, food-prepared")
    maps = sample(guided, cond, seed=2)[1].maps
    trace = SamplerTrace()
    demo.pipeline(class_labels=[0, 16], guidance_scale=3.0, vpg_scale=1.5, trace=trace,
                  generator=[torch.Generator().manual_seed(2 + i) for i in range(2)], output_type="pt",
                  **DEMO_SETTINGS)
    sides = demo.pipeline.transformer.config.patch_nums
    assert [tuple(m.shape) for m in maps] == [(2, s, s) for s in sides]
    for k, m in enumerate(maps):
        p, q = trace.clean[k].softmax(-1), trace.guided[k].softmax(-1)
        expected = 0.5 * (q - p).abs().sum(-1).reshape(2, sides[k], sides[k])
        assert torch.allclose(m, expected, atol=1e-6)
    assert maps[0].abs().max() == 0  # the single start site is never guided
    assert all(m.max() > 0 for m in maps[1:]) and all(m.max() <= 1 for m in maps)


def test_guidance_maps_are_zero_without_vpg(demo):
    maps = sample(cfg(demo, 3.0), classes(demo, "plant"), 0)[1].maps
    assert all(m.abs().max() == 0 for m in maps)


def test_change_map_bounds():
    logits = torch.randn(2, 9, 16)
    assert guidance_map.change_map(logits, logits, (3, 3)).abs().max() == 0
    peaked = torch.full((1, 4, 3), -1e4)
    peaked[..., 0] = 0
    other = torch.full((1, 4, 3), -1e4)
    other[..., 1] = 0
    assert torch.allclose(guidance_map.change_map(peaked, other, (1, 4)), torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match="does not hold"):
        guidance_map.change_map(peaked, other, (3, 3))


def test_guidance_map_node_layout_colours_and_errors(demo, guided):
    g = sample(guided, classes(demo, "plant, hand"), 0)[1]
    for normalize in guidance_map.NORMALIZE:
        (img,) = run(VPGGuidanceMap, guidance=g, normalize=normalize, cell=64)
        assert img.shape == (2, 64, 64 * 7, 3) and 0 <= img.min() and img.max() <= 1
    tile0 = run(VPGGuidanceMap, guidance=g, normalize="per scale", cell=64)[0][:, :, :64]
    assert torch.allclose(tile0, guidance_map.colorize(torch.zeros(2, 64, 64)))  # unguided start scale: darkest
    assert torch.allclose(guidance_map.colorize(torch.ones(1)), guidance_map._RAMP[-1])
    with pytest.raises(ValueError, match="^VPG Guidance Map: `normalize` must be one of 'per scale', 'shared', got"):
        run(VPGGuidanceMap, guidance=g, normalize="log", cell=64)
    with pytest.raises(ValueError, match=r"^VPG Guidance Map: `cell` must be a whole number in \[16, 1024\]"):
        run(VPGGuidanceMap, guidance=g, normalize="shared", cell=8)
    with pytest.raises(ValueError, match="^VPG Guidance Map: `guidance` must come from a VPG Sampler"):
        run(VPGGuidanceMap, guidance=torch.zeros(1), normalize="shared", cell=64)
    empty = guidance_map.GuidanceMaps([], g.images, g.description)
    with pytest.raises(ValueError, match="^VPG Guidance Map: `guidance` holds no scales"):
        run(VPGGuidanceMap, guidance=empty, normalize="shared", cell=64)
