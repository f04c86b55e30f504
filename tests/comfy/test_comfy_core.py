"""The ComfyUI node pack's logic, without ComfyUI: loading, guidance chain, conditioning, sampling, maps."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from comfy_nodes import core, guidance_map, registry
from comfy_nodes.registry import DEMO_CHOICE, NO_COMPANION, VPGLoadError
from tests.helpers.numerics import cfg_gain, record_draws, trace_atol, vpg_gain
from tests.helpers.shared import shared_path
from vpg_pipelines.sampling.next_scale import SamplerTrace

DEMO_SETTINGS = {"top_k": 0, "top_p": 0.95}


def _no_files(name):
    raise FileNotFoundError(f"Model in folder 'vpg' with filename '{name}' not found.")


@pytest.fixture(scope="module")
def demo() -> core.VPGModel:
    pipe, kind = registry.load_pipeline(DEMO_CHOICE, NO_COMPANION, _no_files)
    return core.VPGModel(pipe, kind, DEMO_CHOICE)


@pytest.fixture(scope="module")
def guided(demo) -> core.VPGModel:
    return core.apply_prefix_guidance(core.apply_cfg(demo, 3.0), 1.5, 0.5, "full", "persistent", "all")


# -- loading -------------------------------------------------------------------------------------------
def test_loader_choices_offer_demo_folders_by_index_and_loose_checkpoints():
    files = ["var_d16.pth", "vae_ch160v4096z32.pth", "my_run/model_index.json", "my_run/transformer/x.safetensors",
             "my_run/vae/y.safetensors", "notes.txt", "sub/var_d20.pth"]
    assert registry.loader_choices(files) == [
        DEMO_CHOICE, "my_run/model_index.json", "sub/var_d20.pth", "vae_ch160v4096z32.pth", "var_d16.pth"]
    assert registry.companion_choices(files)[0] == NO_COMPANION
    assert "notes.txt" not in registry.companion_choices(files)


def test_demo_loads_as_var_kind_with_progress_bar_off(demo):
    assert demo.kind.name == "var" and demo.kind.conditioning == "class"
    assert demo.num_scales == len(demo.pipeline.transformer.config.patch_nums) == 6
    assert demo.pipeline._progress_bar_config.get("disable") is True


def test_saved_folder_round_trip_gives_the_same_images(demo, tmp_path):
    demo.pipeline.save_pretrained(tmp_path / "run")
    pipe, kind = registry.load_pipeline("run/model_index.json", NO_COMPANION, lambda n: tmp_path / n)
    model = core.VPGModel(pipe, kind, "run/model_index.json")
    a = core.sample(core.apply_cfg(demo, 3.0), core.encode_classes(demo, "plant"), 5, **DEMO_SETTINGS).images
    b = core.sample(core.apply_cfg(model, 3.0), core.encode_classes(model, "plant"), 5, **DEMO_SETTINGS).images
    assert torch.equal(a, b)


def test_official_pair_loads_with_a_sidecar_config(tmp_path):
    root = shared_path("parity", "var")
    shutil.copy(root / "var.safetensors", tmp_path / "var_d2.safetensors")
    shutil.copy(root / "vqvae.safetensors", tmp_path / "vae_tiny.safetensors")
    resolve = lambda n: tmp_path / n  # noqa: E731
    with pytest.raises(VPGLoadError, match="vae_file"):
        registry.load_pipeline("var_d2.safetensors", NO_COMPANION, resolve)
    with pytest.raises(VPGLoadError, match="patch_nums"):  # not inferable without the sidecar
        registry.load_pipeline("var_d2.safetensors", "vae_tiny.safetensors", resolve)
    shutil.copy(root / "config.json", tmp_path / "var_d2.json")
    pipe, kind = registry.load_pipeline("var_d2.safetensors", "vae_tiny.safetensors", resolve)
    config = json.loads((root / "config.json").read_text())
    assert kind.name == "var" and list(pipe.transformer.config.patch_nums) == config["var"]["patch_nums"]


def test_loader_errors_name_the_input(tmp_path):
    with pytest.raises(VPGLoadError, match="`model_name` 'missing.pth' was not found"):
        registry.load_pipeline("missing.pth", NO_COMPANION, _no_files)
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(VPGLoadError, match="not a checkpoint file name the loader recognises"):
        registry.load_pipeline("weights.pth", NO_COMPANION, lambda n: tmp_path / n)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(VPGLoadError, match="StableDiffusionPipeline, which this node pack cannot load"):
        registry.load_pipeline("other/model_index.json", NO_COMPANION, lambda n: tmp_path / n)
    with pytest.raises(VPGLoadError, match="`dtype`"):
        registry.load_pipeline(DEMO_CHOICE, NO_COMPANION, _no_files, dtype="fp8")


# -- the guidance chain ----------------------------------------------------------------------------------
def test_guidance_nodes_return_patched_copies_and_never_mutate_their_input(demo):
    with_cfg = core.apply_cfg(demo, 2.0)
    with_vpg = core.apply_prefix_guidance(with_cfg, 2.5, 0.25, "token", "resample", "1-3")
    assert demo.cfg is None and demo.prefix is None
    assert with_cfg.cfg.guidance_scale == 2.0 and with_cfg.cfg.schedule == "linear" and with_cfg.prefix is None
    prefix = with_vpg.prefix
    assert (prefix.guidance_scale, prefix.corruption, prefix.mode, prefix.refresh) == (2.5, 0.25, "token", "resample")
    assert list(with_vpg.prefix.scales) == [1, 2, 3]
    assert with_vpg.pipeline is demo.pipeline and with_vpg.cfg is with_cfg.cfg


def test_incompatible_chains_raise_readable_errors(demo):
    with pytest.raises(core.VPGNodeError, match="already has CFG"):
        core.apply_cfg(core.apply_cfg(demo, 1.0), 2.0)
    twice = core.apply_prefix_guidance(demo, 1.5, 0.5, "full", "persistent", "all")
    with pytest.raises(core.VPGNodeError, match="already has Prefix Guidance"):
        core.apply_prefix_guidance(twice, 1.5, 0.5, "full", "persistent", "all")
    with pytest.raises(core.VPGNodeError, match="must come from a VPG Load Model"):
        core.apply_cfg("not a model", 1.0)
    with pytest.raises(core.VPGNodeError, match=r"`vpg_scales` entries must be in \[0, 5\]"):
        core.apply_prefix_guidance(demo, 1.5, 0.5, "full", "persistent", "2, 9")
    with pytest.raises(core.VPGNodeError, match="`vpg_corruption`"):
        core.apply_prefix_guidance(demo, 1.5, 1.5, "full", "persistent", "all")
    with pytest.raises(core.VPGNodeError, match="`mode`"):
        core.apply_prefix_guidance(demo, 1.5, 0.5, "blur", "persistent", "all")


@pytest.mark.parametrize(("text", "parsed"), [("all", "all"), (" Semantic ", "semantic"), ("3,1", [1, 3]),
                                              ("1-3, 5", [1, 2, 3, 5]), ("2 4", [2, 4])])
def test_parse_scales(text, parsed):
    assert core.parse_scales(text) == parsed


@pytest.mark.parametrize("text", ["", "1;x", "4-2", "-1"])
def test_parse_scales_rejects(text):
    with pytest.raises(core.VPGNodeError, match="scales"):
        core.parse_scales(text)


# -- conditioning ---------------------------------------------------------------------------------------
def test_class_names_and_ids_map_to_label_ids(demo):
    cond = core.encode_classes(demo, "Face-Happy, 3\nplant")
    assert cond.class_ids == (0, 3, 14)
    assert cond.names == ("face-happy", "face-creature", "plant")
    assert cond.num_classes == 30 and cond.source == DEMO_CHOICE


def test_conditioning_errors_are_readable(demo):
    with pytest.raises(core.VPGNodeError, match="Did you mean: 'face-happy'"):
        core.encode_classes(demo, "face-hapy")
    with pytest.raises(core.VPGNodeError, match=r"class id 30 is out of range \[0, 29\]"):
        core.encode_classes(demo, "30")
    with pytest.raises(core.VPGNodeError, match="`classes` is empty"):
        core.encode_classes(demo, " , \n")


# -- sampling -------------------------------------------------------------------------------------------
def test_sample_equals_the_pipeline_with_per_image_seeds(demo, guided):
    cond = core.encode_classes(demo, "face-happy, plant")
    out = core.sample(guided, cond, seed=11, batch_size=2, **DEMO_SETTINGS).images
    generators = [torch.Generator().manual_seed(11 + i) for i in range(4)]
    ref = demo.pipeline(class_labels=[0, 14], num_images_per_prompt=2, guidance_scale=3.0, vpg_scale=1.5,
                        generator=generators, output_type="pt", **DEMO_SETTINGS).images
    assert out.shape == (4, 32, 32, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, ref.permute(0, 2, 3, 1))


def test_first_image_does_not_depend_on_batch_size(guided, demo):
    """Batch 3 vs 1 runs other row counts, so it is equal up to rounding: the single run follows the batch's
    draws and must agree with them except at near-ties (tests/helpers/numerics.py). No top-p: a cut-off near a
    probability would be a tie that the draw log cannot see."""
    cond = core.encode_classes(demo, "hand")
    settings = {"top_k": 0, "top_p": 0.0}
    with record_draws() as reference:
        three = core.sample(guided, cond, seed=3, batch_size=3, **settings).images
    with record_draws(replay=reference) as replayed:
        one = core.sample(guided, cond, seed=3, batch_size=1, **settings).images
    trace = SamplerTrace()  # the node's pipeline call, traced for the logits' magnitude
    demo.pipeline(class_labels=list(cond.class_ids), guidance_scale=3.0, vpg_scale=1.5, generator=core.generators(3, 1),
                  output_type="latent", trace=trace, **settings)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(1 + 3.0) * vpg_gain(1.5)))  # VAR's ramp ends at 1 + cfg
    torch.testing.assert_close(one[0], three[0], atol=1e-4, rtol=0)  # the same codes, decoded in another batch


def test_vpg_changes_the_images_of_the_same_seed(demo, guided):
    cond = core.encode_classes(demo, "face-happy, animal-mammal, transport")
    without = core.sample(core.apply_cfg(demo, 3.0), cond, seed=7, **DEMO_SETTINGS).images
    with_vpg = core.sample(guided, cond, seed=7, **DEMO_SETTINGS).images
    assert not torch.equal(without, with_vpg)


def test_progress_callback_once_per_scale_with_a_preview(demo, guided):
    seen = []
    core.sample(guided, core.encode_classes(demo, "plant"), 0, batch_size=2,
                on_scale=lambda p: seen.append((p.index, p.total, p.preview())), **DEMO_SETTINGS)
    assert [(i, t) for i, t, _ in seen] == [(k, 6) for k in range(6)]
    for _, _, preview in seen:
        assert preview.shape == (32, 32, 3) and 0 <= preview.min() and preview.max() <= 1
    assert not torch.equal(seen[0][2], seen[-1][2])  # the partial image sharpens


def test_interrupt_between_scales_stops_sampling_and_returns_nothing(demo, guided):
    class Cancelled(Exception):
        pass

    seen = []

    def check():
        if len(seen) == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        core.sample(guided, core.encode_classes(demo, "plant"), 0, on_scale=lambda p: seen.append(p.index),
                    check_interrupt=check, **DEMO_SETTINGS)
    assert seen == [0, 1]


def test_sampler_rejects_conditioning_of_another_model_and_bad_values(demo, guided):
    foreign = core.VPGConditioning((0,), ("x",), 1000, "var_d16.pth")
    with pytest.raises(core.VPGNodeError, match="made for var_d16.pth"):
        core.sample(guided, foreign, 0)
    with pytest.raises(core.VPGNodeError, match="`conditioning` must come from"):
        core.sample(guided, "face-happy", 0)
    cond = core.encode_classes(demo, "plant")
    with pytest.raises(core.VPGNodeError, match=r"`top_p` must be a number in \[0, 1\]"):
        core.sample(guided, cond, 0, top_p=1.5)
    with pytest.raises(core.VPGNodeError, match="`seed`"):
        core.sample(guided, cond, -1)


# -- guidance maps --------------------------------------------------------------------------------------
def test_guidance_maps_match_the_sampler_trace(demo, guided):
    cond = core.encode_classes(demo, "face-happy, food-prepared")
    maps = core.sample(guided, cond, seed=2, **DEMO_SETTINGS).guidance.maps
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
    out = core.sample(core.apply_cfg(demo, 3.0), core.encode_classes(demo, "plant"), 0, **DEMO_SETTINGS)
    assert all(m.abs().max() == 0 for m in out.guidance.maps)


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


def test_render_layout_and_colours(demo, guided):
    g = core.sample(guided, core.encode_classes(demo, "plant, hand"), 0, **DEMO_SETTINGS).guidance
    for normalize in guidance_map.NORMALIZE:
        img = guidance_map.render(g, normalize, cell=64)
        assert img.shape == (2, 64, 64 * 7, 3) and 0 <= img.min() and img.max() <= 1
    tile0 = guidance_map.render(g, "per scale", cell=64)[:, :, :64]
    assert torch.allclose(tile0, guidance_map.colorize(torch.zeros(2, 64, 64)))  # unguided start scale: darkest
    assert torch.allclose(guidance_map.colorize(torch.ones(1)), guidance_map._RAMP[-1])
    with pytest.raises(ValueError, match="`normalize`"):
        guidance_map.render(g, "log")
