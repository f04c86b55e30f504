"""The node pack's Infinity / InfinityStar logic without ComfyUI: loading the official files and saved
folders, text conditioning, the text-to-image and video samplers, APG, and their readable errors.

Models: the tiny official-format fixtures of ``shared/parity``, laid out by
``tests/comfy/make_standin_models.py`` exactly as a user's ``models/`` folder would be.
"""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from comfy_nodes import host, sources
from comfy_nodes.conditioning import TextConditioning, VPGClassConditioning, VPGTextEncode
from comfy_nodes.guidance import VPGAPG, VPGCFG, VPGPrefixGuidance
from comfy_nodes.loader import VPGModelLoader
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGSampler, VPGTextImageSampler, VPGVideoSampler, infinity_sizes, infinity_star_sizes
from comfy_nodes.sampling import generators
from comfy_nodes.sources import NO_COMPANION
from tests.comfy import make_standin_models as standins
from tests.helpers.comfy import load, run
from tests.helpers.numerics import cfg_gain, record_draws, trace_atol, vpg_gain
from tests.helpers.shared import shared_path
from vpg_pipelines.sampling.next_scale import SamplerTrace

PROMPT = "a red cat on the beach"


def encode(model, prompt, negative=""):
    return run(VPGTextEncode, model=model, prompt=prompt, negative_prompt=negative)[0]


def cfg(model, value):
    return run(VPGCFG, model=model, cfg=value)[0]


def apg(model, value, threshold):
    return run(VPGAPG, model=model, cfg=value, norm_threshold=threshold)[0]


def prefix(model, w, p, mode="full", refresh="persistent", scales="all"):
    return run(VPGPrefixGuidance, model=model, vpg_scale=w, corruption=p, mode=mode, refresh=refresh, scales=scales)[0]


def text_image(model, cond, seed, size="default", batch_size=1, tau=0.5, cfg_insertion_layer=0, top_k=900,
               top_p=0.97):
    """The Text-to-Image Sampler's (images, guidance maps)."""
    return run(VPGTextImageSampler, model=model, conditioning=cond, seed=seed, size=size, batch_size=batch_size,
               tau=tau, cfg_insertion_layer=cfg_insertion_layer, top_k=top_k, top_p=top_p)


def video(model, cond, seed, num_frames=81, size="default", batch_size=1, tau_image=1.0, tau_video=0.4,
          start_image=None):
    """The Video Sampler's frames (its VIDEO output holds the same frames and the fps)."""
    frames, clip = run(VPGVideoSampler, model=model, conditioning=cond, seed=seed, num_frames=num_frames, size=size,
                       batch_size=batch_size, tau_image=tau_image, tau_video=tau_video, start_image=start_image)
    assert torch.equal(clip.get_components().images, frames)
    return frames


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
def infinity(resolve) -> VPGModel:
    pipe, kind = load(f"{standins.TINY_INFINITY}/model_index.json", NO_COMPANION, resolve)
    return VPGModel(pipe, kind, "tiny infinity")


@pytest.fixture(scope="module")
def star(resolve) -> VPGModel:
    pipe, kind = load(f"{standins.TINY_INFINITY_STAR}/model_index.json", NO_COMPANION, resolve)
    return VPGModel(pipe, kind, "tiny star")


# -- loading -------------------------------------------------------------------------------------------
def test_dropdowns_offer_shard_folders_and_t5_folders(models):
    choices = sources.loader_choices(listed(models, "vpg"))
    assert "infinitystar_8b_720p_weights" in choices
    assert not any(c.startswith("infinitystar_8b_720p_weights/") for c in choices)  # its shards are hidden
    assert {"infinity_2b_reg.pth", "vpg-tiny-infinity/model_index.json"} <= set(choices)
    encoders = sources.text_encoder_choices(listed(models, "text_encoders") + listed(models, "vpg"))
    assert encoders == [NO_COMPANION, "flan-t5-xl", "tiny-t5-d64"]  # not the T5 inside a saved pipeline
    # ComfyUI lists only weight files under text_encoders (no .json): folders are found by transformers names
    comfy_listing = ["flan-t5-xl/model-00001-of-00002.safetensors", "flan-t5-xl/model-00002-of-00002.safetensors",
                     "t5xxl_fp16.safetensors", "clip/clip_l.safetensors", "tiny-t5-d64/model.safetensors"]
    assert sources.text_encoder_choices(comfy_listing) == [NO_COMPANION, "flan-t5-xl", "tiny-t5-d64"]


def test_saved_folders_dispatch_by_model_index(infinity, star):
    assert infinity.kind.name == "infinity" and type(infinity.pipeline).__name__ == "VPGInfinityPipeline"
    assert star.kind.name == "infinity_star" and star.kind.media == "video"
    assert infinity.pipeline.text_encoder is not None and star.pipeline.text_encoder is not None


def test_official_infinity_pair_with_t5_folder_equals_the_fixture(resolve, infinity):
    pipe, kind = load("infinity_2b_reg.pth", "infinity_vae_d32reg.pth", resolve,
                                        text_encoder="flan-t5-xl")
    assert kind.name == "infinity" and pipe.config.default_height == 256
    for ours, ref in ((pipe.transformer, infinity.pipeline.transformer), (pipe.text_encoder,
                                                                         infinity.pipeline.text_encoder)):
        a, b = ours.state_dict(), ref.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_star_shard_folder_loads(resolve, star):
    pipe, kind = load("infinitystar_8b_720p_weights", "infinitystar_videovae.pth", resolve,
                                        text_encoder="tiny-t5-d64")
    assert kind.name == "infinity_star" and pipe.default_size == star.pipeline.default_size
    a, b = pipe.transformer.state_dict(), star.pipeline.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_variant_widget_picks_the_official_script(resolve):
    """auto: from the name (this stand-in's says 720p); a chosen variant is passed to the one loader."""
    assert sources.variant_choices() == ["auto", "720p", "480p", "interact"]
    files = ("infinitystar_8b_720p_weights", "infinitystar_videovae.pth", resolve)
    auto, _ = load(*files, text_encoder="tiny-t5-d64")
    picked, kind = load(*files, text_encoder="tiny-t5-d64", variant="480p")
    assert auto.variant == "720p" and picked.variant == "480p" and kind.name == "infinity_star"
    assert type(picked).__name__ == "VPGInfinityStarPipeline"


def test_480p_and_interact_shard_folders_load_as_their_scripts(resolve, models):
    """The stand-ins under the released 480p and Interact names (the shared video VAE): ``variant`` auto takes the
    script from the name, Interact with its own pipeline class; the weights are the fixtures'."""
    choices = sources.loader_choices(listed(models, "vpg"))
    assert {"infinitystar_8b_480p_weights", "InfinityStarInteract_24K_iters"} <= set(choices)
    loaded = {}
    for name, fixture in (("infinitystar_8b_480p_weights", standins.FIXTURES / "infinity_star_480p" /
                           "infinity_star_480p.safetensors"),
                          ("InfinityStarInteract_24K_iters", shared_path("parity", "infinity_star",
                                                                         "infinity_star.safetensors"))):
        pipe, kind = load(name, "infinitystar_videovae.pth", resolve, text_encoder="tiny-t5-d64")
        expected = load_file(fixture)
        state = pipe.transformer.state_dict()
        assert kind.name == "infinity_star" and all(torch.equal(state[k], expected[k]) for k in expected), name
        loaded[name] = pipe
    star480, story = loaded["infinitystar_8b_480p_weights"], loaded["InfinityStarInteract_24K_iters"]
    assert star480.variant == "480p" and type(star480).__name__ == "VPGInfinityStarPipeline"
    assert story.variant == "interact" and type(story).__name__ == "VPGInfinityStarInteractPipeline"
    assert star480.default_size == story.default_size == (192, 336)  # the fixtures' 0.06M budget


@pytest.mark.parametrize(("args", "variant", "message"), [
    (("var_d16.pth", "vae_ch160v4096z32.pth"), "480p",
     "`variant` '480p' is for official InfinityStar checkpoints; `model_name` 'var_d16.pth' is an official var "
     "checkpoint: set `variant` to auto"),
    (("vpg-tiny-infinitystar/model_index.json", NO_COMPANION), "720p",
     "`variant` '720p' is for official InfinityStar checkpoints; `model_name` 'vpg-tiny-infinitystar/model_index.json' "
     "(a saved pipeline folder) brings its own settings: set `variant` to auto"),
    (("infinitystar_8b_720p_weights", "infinitystar_videovae.pth"), "1080p",
     "`variant` must be one of 'auto', '720p', '480p', 'interact', got '1080p'"),
])
def test_variant_refusals_name_the_widget(resolve, args, variant, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load(*args, resolve, variant=variant)


def test_loader_node_refuses_a_variant_in_its_own_words(models, monkeypatch):
    monkeypatch.setattr(host, "folder_list", lambda folder: [models / "vpg"] if folder == host.MODELS else [])
    with pytest.raises(ValueError, match=r"^VPG Load Model: `variant` '480p' is for official InfinityStar "
                                         r"checkpoints; `model_name` 'var_d16.pth' is an official var checkpoint"):
        run(VPGModelLoader, model_name="var_d16.pth", vae_file="vae_ch160v4096z32.pth", text_encoder="none",
            dtype="fp32", quantization="none", offload="none", variant="480p")
    with pytest.raises(ValueError, match=r"^VPG Load Model: `variant` must be one of 'auto', '720p'"):
        run(VPGModelLoader, model_name="var_d16.pth", vae_file="vae_ch160v4096z32.pth", text_encoder="none",
            dtype="fp32", quantization="none", offload="none", variant="8k")


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("infinity_vae_d32reg.pth", "infinity_2b_reg.pth"), {},
     "`model_name` 'infinity_vae_d32reg.pth' is the infinity VAE: pick the transformer"),
    (("infinity_2b_reg.pth", "infinitystar_videovae.pth"), {},
     "`vae_file` 'infinitystar_videovae.pth' is not the infinity VAE; pick the Infinity VAE file"),
    (("infinitystar_8b_720p_weights", "infinity_vae_d32reg.pth"), {},
     "`vae_file` 'infinity_vae_d32reg.pth' is not the infinity_star VAE; pick the InfinityStar video VAE"),
    (("infinitystar_videovae.pth", "infinitystar_videovae.pth"), {}, "is the infinity_star VAE: pick the transformer"),
    (("infinity_2b_reg.pth", NO_COMPANION), {}, "is an official infinity checkpoint; also pick its VAE (the Infinity"),
    (("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"), {"text_encoder": "tiny-t5-d64"},
     "`text_encoder` gives 64-channel features but the transformer takes 128"),
    (("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"), {"text_encoder": "flan-t5-xxl"},
     "`text_encoder` 'flan-t5-xxl' was not found"),
    (("var_d16.pth", "vae_ch160v4096z32.pth"), {"text_encoder": "flan-t5-xl"},
     "`text_encoder` var models are class-conditional: they take no text encoder"),
    (("vpg-tiny-infinity/model_index.json", NO_COMPANION), {"text_encoder": "flan-t5-xl"},
     "the pipeline brings its own text encoder"),
])
def test_bad_combinations_name_what_to_change(resolve, args, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(*args, resolve, **kwargs)


# -- Infinity: text encode + text-to-image ---------------------------------------------------------------
def test_text_encode_uses_the_pipelines_t5(infinity):
    cond = encode(infinity, PROMPT, "blue dog")
    embeds, mask = infinity.pipeline.encode_prompt(PROMPT)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.mask, mask)
    neg, neg_mask = infinity.pipeline.encode_prompt("blue dog")
    assert torch.equal(cond.negative_embeds, neg) and torch.equal(cond.negative_mask, neg_mask)
    assert encode(infinity, PROMPT).negative_embeds is None  # empty: learned null text


def test_text_sampler_equals_the_pipeline_with_per_image_seeds(infinity):
    model = prefix(cfg(infinity, 3.0), 2.0, 0.5, "full", "persistent", "all")
    cond = encode(model, PROMPT, "blue dog")
    # top_p = 0: the single image below is compared across batch layouts, where a top-p cut-off near a bit's
    # probability would be a tie that the draw log cannot see (tests/helpers/numerics.py)
    result = text_image(model, cond, seed=5, batch_size=2, tau=0.5, top_k=900, top_p=0.0)
    assert result[0].shape == (2, 256, 256, 3) and 0 <= result[0].min() and result[0].max() <= 1
    trace = SamplerTrace()
    with record_draws() as reference:
        ref = infinity.pipeline(PROMPT, negative_prompt="blue dog", num_images_per_prompt=2, guidance_scale=3.0,
                                tau=0.5, top_p=0.0, vpg_scale=2.0, vpg_corruption=0.5, trace=trace,
                                generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="pt").images
    torch.testing.assert_close(result[0], ref.permute(0, 2, 3, 1), atol=0, rtol=0)  # the same computation
    with record_draws(replay=reference) as replayed:  # 1 image vs 2: equal up to rounding
        single = text_image(model, cond, seed=5, batch_size=1, top_p=0.0)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(3.0) * vpg_gain(2.0)))
    # same codes; the decoder's batched convolutions round differently (observed 8e-6)
    torch.testing.assert_close(single[0][0], result[0][0], atol=1e-4, rtol=0)


def test_guidance_and_size_reach_the_pipeline(infinity):
    cond = encode(infinity, PROMPT)
    plain = text_image(infinity, cond, seed=0)
    with_cfg = text_image(cfg(infinity, 4.0), cond, seed=0)
    with_vpg = text_image(
        prefix(infinity, 3.0, 0.5, "full", "persistent", "all"), cond, seed=0)
    assert not torch.equal(plain[0], with_cfg[0]) and not torch.equal(plain[0], with_vpg[0])
    assert all(float(m.abs().max()) == 0 for m in plain[1].maps)  # no VPG: nothing changed
    assert any(float(m.max()) > 0 for m in with_vpg[1].maps)
    grids = infinity.pipeline.schedule_for(256, 256).grids
    assert [tuple(m.shape[1:]) for m in with_vpg[1].maps] == [tuple(g[-2:]) for g in grids]
    wide = text_image(infinity, cond, seed=0, size="176x352")  # the 1:2 "0.06M" schedule
    assert wide[0].shape == (1, 176, 352, 3)


def test_text_sampler_progress_preview_and_interrupt(infinity, progress_hook):
    cond = encode(infinity, PROMPT)
    text_image(infinity, cond, seed=0)
    n = infinity.pipeline.schedule_for(256, 256).num_scales
    assert [(v, t) for v, t, _ in progress_hook] == [(k, n) for k in range(1, n + 1)]
    assert progress_hook[-1][2][1].size == (256, 256)  # the last preview: the whole image
    progress_hook.clear()
    host.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: (progress_hook.append(value),
                                                     value == 2 and host.interrupt_current_processing(True)))
    with pytest.raises(host.InterruptProcessingException):
        text_image(infinity, cond, seed=0)
    assert progress_hook == [1, 2]


def test_text_errors_are_readable(infinity, star):
    cond = encode(infinity, PROMPT)
    demo = VPGModel(infinity.pipeline, infinity.kind, "other loader")
    cases = [
        (lambda: run(VPGClassConditioning, model=infinity, classes="cat"), "text-conditioned model; use VPG Text "),
        (lambda: encode(infinity, "  "), "`prompt` is empty"),
        (lambda: run(VPGSampler, model=infinity, conditioning=cond, seed=0, batch_size=1, top_k=0, top_p=0.9),
         "use VPG Text-to-Image Sampler"),
        (lambda: text_image(star, cond, 0), "use VPG Video Sampler"),
        (lambda: text_image(infinity, "a cat", 0), "must come from a VPG Text Encode"),
        (lambda: text_image(demo, cond, 0), "connect VPG Text Encode to the same loader"),
        (lambda: text_image(infinity, cond, 0, size="250x250"), r"`size` must be one of the \d+ choices in its list"),
        (lambda: text_image(infinity, cond, 0, size="big"), "`size` must be one of the"),
        (lambda: text_image(infinity, cond, 0, cfg_insertion_layer=2),
         r"`cfg_insertion_layer` must be a whole number in \[-64, 0\]"),
        (lambda: text_image(infinity, cond, 0, tau=0), r"`tau` must be a number in \[0.01, 5\], got 0"),
        (lambda: apg(infinity, 3.0, 0.05), "takes CFG only"),
        (lambda: prefix(infinity, 2.0, 0.5, "full", "persistent", "1, 40"), "`scales` asks for scale 40, but"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert str(err.value).startswith("VPG "), err.value  # every error carries its node's title


def test_text_encode_without_a_text_encoder_says_where_to_pick_one(resolve):
    pipe, kind = load("infinity_2b_reg.pth", "infinity_vae_d32reg.pth", resolve)
    with pytest.raises(ValueError, match="pick the T5 folder"):
        encode(VPGModel(pipe, kind, "no t5"), PROMPT)


def test_size_lists_hold_the_official_sizes():
    assert {"default", "1024x1024", "256x256", "176x352"} <= set(infinity_sizes())
    assert {"default", "720x1280", "480x848", "192x336"} <= set(infinity_star_sizes())


# -- InfinityStar: APG + video ---------------------------------------------------------------------------
def test_apg_and_prefix_guidance_chain_on_star(star):
    with_apg = apg(star, 34.0, 0.05)
    assert star.cfg is None and with_apg.cfg.guidance_scale == 34.0 and with_apg.cfg.norm_threshold == 0.05
    guided = prefix(with_apg, 1.5, 0.1, "full", "persistent", "semantic")
    assert guided.prefix.scales == "semantic" and with_apg.prefix is None
    with pytest.raises(ValueError, match="already has guidance"):
        apg(cfg(star, 5.0), 34.0, 0.05)
    with pytest.raises(ValueError, match="^VPG Prefix Guidance: `scales` asks for scale 999, but this model has"):
        prefix(star, 1.5, 0.1, "full", "persistent", "1, 999")


def test_video_sampler_equals_the_pipeline_and_returns_frames_and_fps(star, progress_hook):
    model = prefix(apg(star, 34.0, 0.05), 2.0, 0.1, "full", "persistent", "semantic")
    cond = encode(model, PROMPT)
    assert isinstance(cond, TextConditioning) and cond.embeds is None  # encoded in the sampler (caption)
    frames, clip = run(VPGVideoSampler, model=model, conditioning=cond, seed=3, num_frames=17, size="default",
                       batch_size=1, tau_image=1.0, tau_video=0.4)
    result = frames
    h, w = star.pipeline.default_size
    assert frames.shape == (17, h, w, 3) and clip.get_components().frame_rate == 16
    ref = star.pipeline(PROMPT, num_frames=17, guidance_scale=34.0, guidance="apg", apg_norm_threshold=0.05,
                        vpg_scale=2.0, vpg_corruption=0.1, vpg_scales="semantic",
                        generator=[torch.Generator().manual_seed(3)], output_type="pt").frames
    torch.testing.assert_close(result, ref[0].permute(0, 2, 3, 1), atol=0, rtol=0)
    steps = len(star.pipeline.plan(17, h, w).steps)
    assert [(v, t) for v, t, _ in progress_hook] == [(k, steps) for k in range(1, steps + 1)]


def test_video_sampler_cfg_batch_and_errors(star):
    cond = encode(star, PROMPT, "blue dog")
    with record_draws() as reference:
        two = video(cfg(star, 3.0), cond, seed=0, num_frames=1, batch_size=2)
    assert two.shape[0] == 2
    with record_draws(replay=reference) as replayed:  # 1 video vs 2: equal up to rounding (tests/helpers/numerics.py)
        one = video(cfg(star, 3.0), cond, seed=0, num_frames=1)
    trace = SamplerTrace()  # the node's pipeline call, traced for the logits' magnitude
    star.pipeline(PROMPT, negative_prompt="blue dog", num_frames=1, guidance_scale=3.0, guidance="cfg", vpg_scale=1.0,
                  generator=generators(0, 1), output_type="latent", trace=trace)
    replayed.assert_replay_agrees(trace_atol(trace, cfg_gain(3.0)))
    torch.testing.assert_close(one[0], two[0], atol=1e-4, rtol=0)  # batched decode rounding
    off = video(star, cond, seed=0, num_frames=1)
    assert not torch.equal(off[0], one[0])
    with pytest.raises(ValueError, match=r"^VPG Video Sampler: `num_frames` must be one of \[1, 17"):
        video(star, cond, seed=0, num_frames=20)
    with pytest.raises(ValueError, match="^VPG Video Sampler: `size` must be one of the"):
        video(star, cond, seed=0, num_frames=1, size="250x250")


# -- InfinityStar: image to video ------------------------------------------------------------------------
def _photo(seed: int, height: int = 40, width: int = 60) -> tuple[PIL.Image.Image, torch.Tensor]:
    """A random picture as a PIL image and as the ComfyUI IMAGE ``(1, H, W, 3)`` of the same pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels), torch.from_numpy(pixels).float().div(255)[None]


def test_start_image_equals_the_pipelines_image_to_video_and_fixes_the_image_clip(star):
    model = apg(star, 34.0, 0.05)
    cond = encode(model, PROMPT)
    picture, start = _photo(0)
    result = video(model, cond, seed=3, num_frames=17, start_image=start)
    ref = star.pipeline(PROMPT, image=picture, num_frames=17, guidance_scale=34.0, guidance="apg",
                        apg_norm_threshold=0.05, vpg_scale=1.0, generator=[torch.Generator().manual_seed(3)],
                        output_type="pt").frames
    torch.testing.assert_close(result, ref[0].permute(0, 2, 3, 1), atol=0, rtol=0)
    text_only = video(model, cond, seed=3, num_frames=17)
    assert not torch.equal(result, text_only)
    # the image clip (num_frames=1 is that clip alone) is the image's codes whatever the seed; the rest is sampled
    stills = [video(model, cond, seed=s, num_frames=1, start_image=start) for s in (0, 9)]
    torch.testing.assert_close(stills[0], stills[1], atol=0, rtol=0)
    other = video(model, cond, seed=4, num_frames=17, start_image=start)
    assert not torch.equal(other[1:], result[1:])


def test_start_image_batch_gives_one_start_per_video_and_is_validated(star):
    cond = encode(star, PROMPT, "blue dog")
    model = cfg(star, 3.0)
    starts = torch.cat([_photo(1)[1], _photo(2)[1]])
    pair = video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=starts)
    assert pair.shape[0] == 2 and not torch.equal(pair[0], pair[1])
    for i in range(2):
        alone = video(model, cond, seed=i, num_frames=1, start_image=starts[i : i + 1])
        # one frame = the image clip, whose codes the start image forces: only the batched decode rounds differently
        torch.testing.assert_close(alone[0], pair[i], atol=1e-4, rtol=0)
    shared = video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=starts[:1])
    torch.testing.assert_close(shared[0], shared[1], atol=1e-4, rtol=0)
    for bad in (torch.cat([starts, starts[:1]]), starts[0], torch.zeros(1, 8, 8, 2), "photo.png",
                torch.full((1, 8, 8, 3), float("nan"))):
        with pytest.raises(ValueError, match="`start_image`"):
            video(model, cond, seed=0, num_frames=1, batch_size=2, start_image=bad)
