"""The node pack's Infinity / InfinityStar logic without ComfyUI: loading the official files and saved
folders, text conditioning, the text-to-image and video samplers, APG, and their readable errors.

Models: the tiny official-format fixtures of ``shared/parity``, laid out by
``tests/comfy/make_standin_models.py`` exactly as a user's ``models/`` folder would be.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from comfy_nodes import core, registry, text_sampling
from comfy_nodes.registry import NO_COMPANION, VPGLoadError
from comfy_nodes.text_sampling import VPGTextConditioning
from tests.comfy import make_standin_models as standins
from tests.helpers.numerics import cfg_gain, record_draws, trace_atol, vpg_gain
from tests.helpers.shared import shared_path
from vpg_pipelines.sampling.next_scale import SamplerTrace

PROMPT = "a red cat on the beach"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ComfyUI-style ``models`` folder: ``vpg/`` (stand-ins, tiny folders) and ``text_encoders/``."""
    shared_path("parity", "infinity_star")  # fails with the reason when the fixtures are missing
    root = tmp_path_factory.mktemp("models")
    (root / "vpg").mkdir()
    standins.write_tiny(root / "vpg")
    standins.write_official_standins(root / "vpg")
    return root


@pytest.fixture(scope="module")
def resolve(models):
    def find(name: str):
        for folder in ("vpg", "text_encoders"):
            if (models / folder / name).exists():
                return models / folder / name
        raise FileNotFoundError(name)

    return find


def listed(models, folder: str) -> list[str]:
    return [str(p.relative_to(models / folder)) for p in (models / folder).rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def infinity(resolve) -> core.VPGModel:
    pipe, kind = registry.load_pipeline(f"{standins.TINY_INFINITY}/model_index.json", NO_COMPANION, resolve)
    return core.VPGModel(pipe, kind, "tiny infinity")


@pytest.fixture(scope="module")
def star(resolve) -> core.VPGModel:
    pipe, kind = registry.load_pipeline(f"{standins.TINY_INFINITY_STAR}/model_index.json", NO_COMPANION, resolve)
    return core.VPGModel(pipe, kind, "tiny star")


# -- loading -------------------------------------------------------------------------------------------
def test_dropdowns_offer_shard_folders_and_t5_folders(models):
    choices = registry.loader_choices(listed(models, "vpg"))
    assert "infinitystar_8b_720p_weights" in choices
    assert not any(c.startswith("infinitystar_8b_720p_weights/") for c in choices)  # its shards are hidden
    assert {"infinity_2b_reg.pth", "vpg-tiny-infinity/model_index.json"} <= set(choices)
    encoders = registry.text_encoder_choices(listed(models, "text_encoders") + listed(models, "vpg"))
    assert encoders == [NO_COMPANION, "flan-t5-xl", "tiny-t5-d64"]  # not the T5 inside a saved pipeline
    # ComfyUI lists only weight files under text_encoders (no .json): folders are found by transformers names
    comfy_listing = ["flan-t5-xl/model-00001-of-00002.safetensors", "flan-t5-xl/model-00002-of-00002.safetensors",
                     "t5xxl_fp16.safetensors", "clip/clip_l.safetensors", "tiny-t5-d64/model.safetensors"]
    assert registry.text_encoder_choices(comfy_listing) == [NO_COMPANION, "flan-t5-xl", "tiny-t5-d64"]


def test_saved_folders_dispatch_by_model_index(infinity, star):
    assert infinity.kind.name == "infinity" and type(infinity.pipeline).__name__ == "VPGInfinityPipeline"
    assert star.kind.name == "infinity_star" and star.kind.media == "video"
    assert infinity.pipeline.text_encoder is not None and star.pipeline.text_encoder is not None


def test_official_infinity_pair_with_t5_folder_equals_the_fixture(resolve, infinity):
    pipe, kind = registry.load_pipeline("infinity_2b_reg.pth", "infinity_vae_d32reg.pth", resolve,
                                        text_encoder="flan-t5-xl")
    assert kind.name == "infinity" and pipe.config.default_height == 256
    for ours, ref in ((pipe.transformer, infinity.pipeline.transformer), (pipe.text_encoder,
                                                                         infinity.pipeline.text_encoder)):
        a, b = ours.state_dict(), ref.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_star_shard_folder_loads(resolve, star):
    pipe, kind = registry.load_pipeline("infinitystar_8b_720p_weights", "infinitystar_videovae.pth", resolve,
                                        text_encoder="tiny-t5-d64")
    assert kind.name == "infinity_star" and pipe.default_size == star.pipeline.default_size
    a, b = pipe.transformer.state_dict(), star.pipeline.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("infinity_vae_d32reg.pth", "infinity_2b_reg.pth"), {}, "is the VAE: pick the transformer"),
    (("infinity_2b_reg.pth", "infinitystar_videovae.pth"), {}, "is not an Infinity VAE"),
    (("infinitystar_8b_720p_weights", "infinity_vae_d32reg.pth"), {}, "is not the InfinityStar video VAE"),
    (("infinitystar_videovae.pth", "infinitystar_videovae.pth"), {}, "is the video VAE"),
    (("infinity_2b_reg.pth", NO_COMPANION), {}, "also pick the Infinity VAE file"),
    (("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"), {"text_encoder": "tiny-t5-d64"},
     "gives 64-channel features but the transformer takes 128"),
    (("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"), {"text_encoder": "flan-t5-xxl"},
     "`text_encoder` 'flan-t5-xxl' was not found"),
    (("var_d16.pth", "vae_ch160v4096z32.pth"), {"text_encoder": "flan-t5-xl"}, "set `text_encoder` to 'none'"),
    (("vpg-tiny-infinity/model_index.json", NO_COMPANION), {"text_encoder": "flan-t5-xl"},
     "brings its own text encoder"),
])
def test_bad_combinations_name_what_to_change(resolve, args, kwargs, message):
    with pytest.raises(VPGLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.load_pipeline(*args, resolve, **kwargs)


# -- Infinity: text encode + text-to-image ---------------------------------------------------------------
def test_text_encode_uses_the_pipelines_t5(infinity):
    cond = text_sampling.encode_text(infinity, PROMPT, "blue dog")
    embeds, mask = infinity.pipeline.encode_prompt(PROMPT)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.mask, mask)
    neg, neg_mask = infinity.pipeline.encode_prompt("blue dog")
    assert torch.equal(cond.negative_embeds, neg) and torch.equal(cond.negative_mask, neg_mask)
    assert text_sampling.encode_text(infinity, PROMPT).negative_embeds is None  # empty: learned null text


def test_text_sampler_equals_the_pipeline_with_per_image_seeds(infinity):
    model = core.apply_prefix_guidance(core.apply_cfg(infinity, 3.0), 2.0, 0.5, "full", "persistent", "all")
    cond = text_sampling.encode_text(model, PROMPT, "blue dog")
    # top_p = 0: the single image below is compared across batch layouts, where a top-p cut-off near a bit's
    # probability would be a tie that the draw log cannot see (tests/helpers/numerics.py)
    result = text_sampling.sample_text_image(model, cond, seed=5, batch_size=2, tau=0.5, top_k=900, top_p=0.0)
    assert result.images.shape == (2, 256, 256, 3) and 0 <= result.images.min() and result.images.max() <= 1
    trace = SamplerTrace()
    with record_draws() as reference:
        ref = infinity.pipeline(PROMPT, negative_prompt="blue dog", num_images_per_prompt=2, guidance_scale=3.0,
                                tau=0.5, top_p=0.0, vpg_scale=2.0, vpg_corruption=0.5, trace=trace,
                                generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="pt").images
    torch.testing.assert_close(result.images, ref.permute(0, 2, 3, 1), atol=0, rtol=0)  # the same computation
    with record_draws(replay=reference) as replayed:  # 1 image vs 2: equal up to rounding
        single = text_sampling.sample_text_image(model, cond, seed=5, batch_size=1, top_p=0.0)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(3.0) * vpg_gain(2.0)))
    # same codes; the decoder's batched convolutions round differently (observed 8e-6)
    torch.testing.assert_close(single.images[0], result.images[0], atol=1e-4, rtol=0)


def test_guidance_and_size_reach_the_pipeline(infinity):
    cond = text_sampling.encode_text(infinity, PROMPT)
    plain = text_sampling.sample_text_image(infinity, cond, seed=0)
    with_cfg = text_sampling.sample_text_image(core.apply_cfg(infinity, 4.0), cond, seed=0)
    with_vpg = text_sampling.sample_text_image(
        core.apply_prefix_guidance(infinity, 3.0, 0.5, "full", "persistent", "all"), cond, seed=0)
    assert not torch.equal(plain.images, with_cfg.images) and not torch.equal(plain.images, with_vpg.images)
    assert all(float(m.abs().max()) == 0 for m in plain.guidance.maps)  # no VPG: nothing changed
    assert any(float(m.max()) > 0 for m in with_vpg.guidance.maps)
    grids = [infinity.pipeline.token_grid(k) for k in range(infinity.pipeline.num_scales)]
    assert [tuple(m.shape[1:]) for m in with_vpg.guidance.maps] == grids
    wide = text_sampling.sample_text_image(infinity, cond, seed=0, size="176x352")  # the 1:2 "0.06M" schedule
    assert wide.images.shape == (1, 176, 352, 3)


def test_text_sampler_progress_preview_and_interrupt(infinity):
    cond = text_sampling.encode_text(infinity, PROMPT)
    ticks = []
    text_sampling.sample_text_image(infinity, cond, seed=0,
                                    on_scale=lambda p: ticks.append((p.index, p.total, tuple(p.preview().shape))))
    n = infinity.pipeline.num_timesteps
    assert [t[:2] for t in ticks] == [(k, n) for k in range(n)] and ticks[-1][2] == (256, 256, 3)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_two():
        seen.append(1)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        text_sampling.sample_text_image(infinity, cond, seed=0, check_interrupt=stop_after_two)
    assert len(seen) == 2


def test_text_errors_are_readable(infinity, star):
    cond = text_sampling.encode_text(infinity, PROMPT)
    demo = core.VPGModel(infinity.pipeline, infinity.kind, "other loader")
    cases = [
        (lambda: core.encode_classes(infinity, "cat"), "text-conditioned model; use a prompt node"),
        (lambda: text_sampling.encode_text(infinity, "  "), "`prompt` is empty"),
        (lambda: core.sample(infinity, cond, 0), "use VPG Text-to-Image Sampler"),
        (lambda: text_sampling.sample_text_image(star, cond, 0), "use VPG Video Sampler"),
        (lambda: text_sampling.sample_text_image(infinity, "a cat", 0), "must come from a VPG Text Encode"),
        (lambda: text_sampling.sample_text_image(demo, cond, 0), "connect VPG Text Encode to the same loader"),
        (lambda: text_sampling.sample_text_image(infinity, cond, 0, size="250x250"), "not an Infinity schedule"),
        (lambda: text_sampling.sample_text_image(infinity, cond, 0, size="big"), "`size` must be 'default'"),
        (lambda: text_sampling.sample_text_image(infinity, cond, 0, cfg_insertion_layer=2), "cfg_insertion_layer"),
        (lambda: text_sampling.sample_text_image(infinity, cond, 0, tau=0), "`tau` must be a number"),
        (lambda: core.apply_apg(infinity, 3.0, 0.05), "takes CFG only"),
        (lambda: core.apply_prefix_guidance(infinity, 2.0, 0.5, "full", "persistent", "1, 40"), "must be in"),
    ]
    for call, message in cases:
        with pytest.raises(core.VPGNodeError, match=message):
            call()


def test_text_encode_without_a_text_encoder_says_where_to_pick_one(resolve):
    pipe, kind = registry.load_pipeline("infinity_2b_reg.pth", "infinity_vae_d32reg.pth", resolve)
    with pytest.raises(core.VPGNodeError, match="pick the T5 folder"):
        text_sampling.encode_text(core.VPGModel(pipe, kind, "no t5"), PROMPT)


def test_size_lists_hold_the_official_sizes():
    assert {"default", "1024x1024", "256x256", "176x352"} <= set(text_sampling.infinity_sizes())
    assert {"default", "720x1280", "480x848", "192x336"} <= set(text_sampling.infinity_star_sizes())


# -- InfinityStar: APG + video ---------------------------------------------------------------------------
def test_apg_and_prefix_guidance_chain_on_star(star):
    apg = core.apply_apg(star, 34.0, 0.05)
    assert star.cfg is None and apg.cfg.guidance_scale == 34.0 and apg.cfg.norm_threshold == 0.05
    guided = core.apply_prefix_guidance(apg, 1.5, 0.1, "full", "persistent", "semantic")
    assert guided.prefix.scales == "semantic" and apg.prefix is None
    with pytest.raises(core.VPGNodeError, match="already has guidance"):
        core.apply_apg(core.apply_cfg(star, 5.0), 34.0, 0.05)
    with pytest.raises(core.VPGNodeError, match="must be in"):
        core.apply_prefix_guidance(star, 1.5, 0.1, "full", "persistent", "1, 999")


def test_video_sampler_equals_the_pipeline_and_returns_frames_and_fps(star):
    model = core.apply_prefix_guidance(core.apply_apg(star, 34.0, 0.05), 2.0, 0.1, "full", "persistent", "semantic")
    cond = text_sampling.encode_text(model, PROMPT)
    assert isinstance(cond, VPGTextConditioning) and cond.embeds is None  # encoded in the sampler (caption)
    ticks = []
    result = text_sampling.sample_video(model, cond, seed=3, num_frames=17,
                                        on_scale=lambda p: ticks.append((p.index, p.total)))
    h, w = star.pipeline.default_size
    assert result.frames.shape == (17, h, w, 3) and result.fps == 16 and result.num_videos == 1
    ref = star.pipeline(PROMPT, num_frames=17, guidance_scale=34.0, guidance="apg", apg_norm_threshold=0.05,
                        vpg_scale=2.0, vpg_corruption=0.1, vpg_scales="semantic",
                        generator=[torch.Generator().manual_seed(3)], output_type="pt").frames
    torch.testing.assert_close(result.frames, ref[0].permute(0, 2, 3, 1), atol=0, rtol=0)
    steps = len(star.pipeline.plan(17, h, w).steps)
    assert ticks == [(k, steps) for k in range(steps)]


def test_video_sampler_cfg_batch_and_errors(star):
    cond = text_sampling.encode_text(star, PROMPT, "blue dog")
    with record_draws() as reference:
        two = text_sampling.sample_video(core.apply_cfg(star, 3.0), cond, seed=0, num_frames=1, batch_size=2)
    assert two.frames.shape[0] == 2 and two.num_videos == 2
    with record_draws(replay=reference) as replayed:  # 1 video vs 2: equal up to rounding (tests/helpers/numerics.py)
        one = text_sampling.sample_video(core.apply_cfg(star, 3.0), cond, seed=0, num_frames=1)
    trace = SamplerTrace()  # the node's pipeline call, traced for the logits' magnitude
    star.pipeline(PROMPT, negative_prompt="blue dog", num_frames=1, guidance_scale=3.0, guidance="cfg", vpg_scale=1.0,
                  generator=core.generators(0, 1), output_type="latent", trace=trace)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(3.0)))
    torch.testing.assert_close(one.frames[0], two.frames[0], atol=1e-4, rtol=0)  # batched decode rounding
    off = text_sampling.sample_video(star, cond, seed=0, num_frames=1)
    assert not torch.equal(off.frames[0], one.frames[0])
    with pytest.raises(core.VPGNodeError, match=r"`num_frames` must be one of \[1, 17"):
        text_sampling.sample_video(star, cond, seed=0, num_frames=20)
    with pytest.raises(core.VPGNodeError, match="is not a size of the official schedules"):
        text_sampling.sample_video(star, cond, seed=0, num_frames=1, size="250x250")


# -- InfinityStar: image to video ------------------------------------------------------------------------
def _photo(seed: int, height: int = 40, width: int = 60) -> tuple[PIL.Image.Image, torch.Tensor]:
    """A random picture as a PIL image and as the ComfyUI IMAGE ``(1, H, W, 3)`` of the same pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels), torch.from_numpy(pixels).float().div(255)[None]


def test_start_image_equals_the_pipelines_image_to_video_and_fixes_the_image_clip(star):
    model = core.apply_apg(star, 34.0, 0.05)
    cond = text_sampling.encode_text(model, PROMPT)
    picture, start = _photo(0)
    result = text_sampling.sample_video(model, cond, seed=3, num_frames=17, start_image=start)
    ref = star.pipeline(PROMPT, image=picture, num_frames=17, guidance_scale=34.0, guidance="apg",
                        apg_norm_threshold=0.05, vpg_scale=1.0, generator=[torch.Generator().manual_seed(3)],
                        output_type="pt").frames
    torch.testing.assert_close(result.frames, ref[0].permute(0, 2, 3, 1), atol=0, rtol=0)
    text_only = text_sampling.sample_video(model, cond, seed=3, num_frames=17)
    assert not torch.equal(result.frames, text_only.frames)
    # the image clip (num_frames=1 is that clip alone) is the image's codes whatever the seed; the rest is sampled
    stills = [text_sampling.sample_video(model, cond, seed=s, num_frames=1, start_image=start).frames for s in (0, 9)]
    torch.testing.assert_close(stills[0], stills[1], atol=0, rtol=0)
    other = text_sampling.sample_video(model, cond, seed=4, num_frames=17, start_image=start)
    assert not torch.equal(other.frames[1:], result.frames[1:])


def test_start_image_batch_gives_one_start_per_video_and_is_validated(star):
    cond = text_sampling.encode_text(star, PROMPT, "blue dog")
    model = core.apply_cfg(star, 3.0)
    starts = torch.cat([_photo(1)[1], _photo(2)[1]])
    pair = text_sampling.sample_video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=starts)
    assert pair.frames.shape[0] == 2 and not torch.equal(pair.frames[0], pair.frames[1])
    for i in range(2):
        alone = text_sampling.sample_video(model, cond, seed=i, num_frames=1, start_image=starts[i : i + 1])
        # one frame = the image clip, whose codes the start image forces: only the batched decode rounds differently
        torch.testing.assert_close(alone.frames[0], pair.frames[i], atol=1e-4, rtol=0)
    shared = text_sampling.sample_video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=starts[:1])
    torch.testing.assert_close(shared.frames[0], shared.frames[1], atol=1e-4, rtol=0)
    for bad in (torch.cat([starts, starts[:1]]), starts[0], torch.zeros(1, 8, 8, 2), "photo.png",
                torch.full((1, 8, 8, 3), float("nan"))):
        with pytest.raises(core.VPGNodeError, match="`start_image`"):
            text_sampling.sample_video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=bad)
