"""VPGInfinityStarPipeline: fixture replay through the pipeline, the diffusers contract, i2v, MP4 export."""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.numerics import apg_gain, assert_same_steps, layout_atol, record_draws, vpg_gain
from tests.helpers.star import SIZE
from vpg_pipelines import VPGInfinityStarPipeline, export_to_video
from vpg_pipelines.models.infinity_star.conditioning import center_crop_resize, image_clip_bits
from vpg_pipelines.models.infinity_star.settings import PROMPT_SUFFIX, default_size, resolve_args
from vpg_pipelines.sampling.next_scale import SamplerTrace
from vpg_pipelines.testing import tiny_t5

GUIDED_ATOL, GUIDED_VIDEO_ATOL, GUIDED_MEAN_ATOL = 1e-4, 5e-4, 1e-4  # as the adapter-level replay
SUMMED_ATOL = 1e-4
FRAMES_ATOL = 1e-3  # the fixture video is float16 in [-1, 1] (2e-3 there), frames are in [0, 1]


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- parity ----------------------------------------------------------------------------------------
@torch.no_grad()
def test_prefix_codes_forcing_every_step_reproduce_the_official_fixture(parity_pipe, fixture_files):
    _, _, cases, meta = fixture_files
    logits, latents = {}, {}

    def record(pipe, i, scale, kwargs):
        logits[i] = kwargs["logits"].clone()
        latents[i] = kwargs["latents"]
        return {}

    out = parity_pipe(
        prompt_embeds=cases["text.features"][None], negative_prompt_embeds=cases["negative_text.features"][None],
        num_frames=17, **SIZE, vpg_scale=1.0,
        prefix_codes=[cases[f"forced_bits.step{i}"] for i in range(meta["steps"])],
        output_type="pt", callback_on_step_end=record, callback_on_step_end_tensor_inputs=["logits", "latents"],
    )
    plan = parity_pipe.plan(17, **SIZE)
    assert parity_pipe.num_timesteps == meta["steps"] == len(logits) == 61
    worst = 0.0
    for step in plan.steps:
        err = (logits[step.index] - cases[f"guided_logits.step{step.index}"]).abs()
        worst = max(worst, err.max().item())
        assert err.max().item() <= (GUIDED_ATOL if step.tau == 1.0 else GUIDED_VIDEO_ATOL), step.index
        assert err.mean().item() <= GUIDED_MEAN_ATOL, step.index
    summed_err = (latents[60] - cases["summed_codes"]).abs().max().item()
    expected = cases["video_fp16"].float().clamp(-1, 1)
    expected[:, :, 0] = expected[:, :, 1]  # the official sampler copies frame 1 over frame 0
    expected = (expected / 2 + 0.5).permute(0, 2, 1, 3, 4)
    frames_err = (out.frames - expected).abs().max().item()
    print(f"pipeline replay: guided logits max abs error {worst:.2e}, summed codes {summed_err:.2e}, "
          f"frames {frames_err:.2e}")
    assert out.frames.shape == (1, 17, 3, 192, 336)
    assert summed_err <= SUMMED_ATOL
    assert frames_err <= FRAMES_ATOL


def test_defaults_are_the_released_720p_settings():
    args = resolve_args()
    assert default_size(args) == (720, 1280)
    assert (args["cfg"], args["apg_norm_threshold"], args["tau_image"], args["tau_video"]) == (34.0, 0.05, 1.0, 0.4)
    assert args["video_scale_repetition"] == [3] * 12 + [2, 1, 1] and args["semantic_scales"] == 12
    assert default_size(resolve_args({"pn": "0.40M"})) == (480, 848)
    params = inspect.signature(VPGInfinityStarPipeline.__call__).parameters
    assert params["vpg_scales"].default == "semantic" and params["vpg_corruption"].default == 0.1
    with pytest.raises(ValueError, match="args.pn"):
        resolve_args({"pn": "2M"})
    with pytest.raises(ValueError, match="args.noise_input"):
        resolve_args({"noise_input": 1})
    with pytest.raises(ValueError, match="args.image_scale_repetition"):
        resolve_args({"image_scale_repetition": "[3, 0]"})


# -- the diffusers contract --------------------------------------------------------------------------
def test_call_signature_and_components(fast_pipe):
    params = inspect.signature(VPGInfinityStarPipeline.__call__).parameters
    for name in ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask",
                 "num_frames", "height", "width", "guidance_scale", "guidance", "apg_norm_threshold", "tau_image",
                 "tau_video", "image", "prefix_codes", "generator", "vpg_scale", "vpg_corruption", "vpg_mode",
                 "vpg_refresh", "vpg_scales", "output_type", "return_dict", "callback_on_step_end",
                 "callback_on_step_end_tensor_inputs"):
        assert name in params
    assert set(fast_pipe.components) == {"transformer", "vae", "text_encoder", "tokenizer"}
    assert fast_pipe.model_cpu_offload_seq == "text_encoder->transformer->vae" and fast_pipe.fps == 16


@torch.no_grad()
def test_prompt_uses_the_official_template_and_t5_features(fast_pipe):
    caption = fast_pipe.caption("a cat", 17)
    assert caption == "<<<t=1s>>>a cat" + PROMPT_SUFFIX
    tokens = fast_pipe.tokenizer(text=[caption], max_length=fast_pipe.transformer.config.text_maxlen,
                                 padding="max_length", truncation=True, return_tensors="pt")
    length = int(tokens.attention_mask.sum())
    features = fast_pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    kw = dict(num_frames=1, **SIZE, output_type="latent", vpg_scale=1.0)
    by_text = fast_pipe("a cat", generator=gens(0), **kw).frames
    by_embeds = fast_pipe(prompt_embeds=features[:, :length], generator=gens(0), **kw).frames
    padded = torch.cat([features[:, :length], torch.randn(1, 5, 64)], dim=1)
    mask = torch.cat([torch.ones(1, length), torch.zeros(1, 5)], dim=1)
    masked = fast_pipe(prompt_embeds=padded, prompt_attention_mask=mask, generator=gens(0), **kw).frames
    assert torch.equal(by_text, by_embeds) and torch.equal(by_text, masked)
    # an empty negative prompt is the official default (the learned null text); a real one changes the result
    empty = fast_pipe("a cat", negative_prompt="", generator=gens(0), **kw).frames
    other = fast_pipe("a cat", negative_prompt="dog", generator=gens(0), **kw).frames
    assert torch.equal(empty, by_text) and not torch.equal(other, by_text)


def test_save_load_round_trip_is_bit_identical(fast_pipe, tmp_path):
    kw = dict(num_frames=17, **SIZE, vpg_scale=2.0, output_type="latent")
    before = fast_pipe(["a cat", "dog"], generator=gens(0, 1), **kw).frames
    fast_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VPGInfinityStarPipeline"
    assert index["transformer"] == ["vpg_pipelines.models.infinity_star.transformer", "InfinityStarTransformer"]
    assert index["official_args"]["image_scale_repetition"] == [1] * 11
    loaded = VPGInfinityStarPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(["a cat", "dog"], generator=gens(0, 1), **kw).frames
    assert torch.equal(before, after)


@pytest.fixture(scope="module")
def fast_video(fast_pipe):
    """One decoded 17-frame video (decoding is the slow part on CPU) and its summed codes."""
    kw = dict(prompt="red cat", num_frames=17, **SIZE, vpg_scale=2.0)
    latent = fast_pipe(**kw, generator=gens(0), output_type="latent").frames
    return fast_pipe(**kw, generator=gens(0), output_type="pt").frames, latent


@torch.no_grad()
def test_video_output_is_the_decoded_summed_codes(fast_pipe, fast_video):
    pt, latent = fast_video
    assert pt.shape == (1, 17, 3, 192, 336) and latent.shape == (1, 64, 5, 12, 21)
    assert torch.equal(pt[:, 0], pt[:, 1])  # official: frame 1 copied over frame 0
    decoded = fast_pipe.vae.decode(latent).clamp(-1, 1) / 2 + 0.5
    torch.testing.assert_close(pt[:, 1:], decoded.permute(0, 2, 1, 3, 4)[:, 1:], atol=1e-6, rtol=0)


def test_output_types_agree(fast_pipe):
    kw = dict(prompt="red cat", num_frames=1, **SIZE, vpg_scale=2.0)
    pt = fast_pipe(**kw, generator=gens(0), output_type="pt").frames
    np_ = fast_pipe(**kw, generator=gens(0), output_type="np").frames
    pil = fast_pipe(**kw, generator=gens(0), output_type="pil").frames
    (tup,) = fast_pipe(**kw, generator=gens(0), output_type="np", return_dict=False)
    assert pt.shape == (1, 1, 3, 192, 336) and np_.shape == (1, 1, 192, 336, 3)
    assert len(pil) == 1 and len(pil[0]) == 1 and pil[0][0].size == (336, 192)
    assert np.abs(pt.permute(0, 1, 3, 4, 2).numpy() - np_).max() < 1e-6 and np.array_equal(tup, np_)
    assert np.abs(np.asarray(pil[0][0], dtype=np.float32) / 255 - np_[0, 0]).max() <= 1 / 255 + 1e-6


def test_batch_equals_videos_generated_one_by_one(fast_pipe):
    """1 row vs 4: equal up to rounding; the single runs follow the batch's draws (numerics.record_draws)."""
    kw = dict(num_frames=17, **SIZE, vpg_scale=3.0, vpg_corruption=0.5, output_type="latent")
    batch_trace = SamplerTrace()
    with record_draws() as reference:
        batch = fast_pipe(["a cat", "dog"], num_videos_per_prompt=2, generator=gens(10, 11, 12, 13), trace=batch_trace,
                          **kw).frames
    assert batch.shape[0] == 4
    for i, (prompt, seed) in enumerate(zip(["a cat", "a cat", "dog", "dog"], [10, 11, 12, 13])):
        trace = SamplerTrace()
        with record_draws(replay=reference) as replayed:
            one = fast_pipe(prompt, generator=gens(seed), trace=trace, **kw).frames
        assert_same_steps(batch_trace, trace, replayed, apg_gain(34.0) * vpg_gain(3.0), rows=slice(i, i + 1))
        torch.testing.assert_close(batch[i : i + 1], one, atol=1e-5, rtol=0)  # the same bits: the same sums
    assert not torch.equal(batch[0], batch[1])


def test_default_vpg_guides_the_semantic_scales_and_drops_its_rows(fast_pipe):
    trace = SamplerTrace()
    fast_pipe("a cat", num_frames=17, **SIZE, generator=gens(0), output_type="latent", trace=trace)
    plan = fast_pipe.plan(17, **SIZE)
    semantic = [s.index for s in plan.steps if s.rel_scale < 8 and s.num_sites > 1]
    assert sorted(trace.corrupted) == semantic
    last = max(semantic)
    assert trace.rows[last] == 4 and trace.rows[last + 1] == 2  # (clean, corrupted) x (prompt, null), then CFG only
    plain = SamplerTrace()
    fast_pipe("a cat", num_frames=17, **SIZE, generator=gens(0), output_type="latent", trace=plain, vpg_scale=1.0)
    assert not plain.corrupted and set(plain.rows.values()) == {2}


def test_guidance_modes(fast_pipe):
    kw = dict(prompt="a cat", num_frames=1, **SIZE, vpg_scale=1.0, output_type="latent")
    traces = {}
    settings = {"apg": {}, "cfg": {"guidance": "cfg", "guidance_scale": 3.0}, "off": {"guidance_scale": 1.0}}
    for name, extra in settings.items():
        traces[name] = SamplerTrace()
        fast_pipe(**kw, **extra, generator=gens(0), trace=traces[name])
    assert traces["off"].rows[0] == 1 and traces["apg"].rows[0] == 2 == traces["cfg"].rows[0]
    assert not torch.allclose(traces["apg"].guided[5], traces["cfg"].guided[5])


def test_callback_edits_latents_and_can_interrupt(fast_pipe):
    def zero_last(pipe, i, scale, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == pipe.num_timesteps - 1 else {}

    out = fast_pipe("a cat", num_frames=17, **SIZE, output_type="latent", callback_on_step_end=zero_last)
    assert out.frames.shape == (1, 64, 5, 12, 21) and out.frames.abs().sum() == 0
    calls = []

    def stop(pipe, i, scale, kwargs):
        calls.append(i)
        pipe._interrupt = i == 3
        return {}

    out = fast_pipe("a cat", num_frames=17, **SIZE, output_type="latent", callback_on_step_end=stop)
    assert calls == [0, 1, 2, 3] and out.frames.shape == (1, 64, 1, 12, 21)
    with pytest.raises(ValueError, match="latents"):
        fast_pipe("a cat", num_frames=1, **SIZE, output_type="latent",
                  callback_on_step_end=lambda p, i, s, k: {"latents": torch.zeros(1)})


@torch.no_grad()
def test_texts_of_different_lengths_batch_like_single_runs(parity_pipe, fixture_files):
    """The official sampler runs one text, its prefix as long as that text; a batch pads to the longest
    text, and the adapter hides that extra padding from each row (the negative's own padding up to its
    sample's length stays visible, as officially)."""
    from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
    from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
    from vpg_pipelines.sampling.next_scale import run_next_scale

    _, _, cases, _ = fixture_files
    adapter = InfinityStarAdapter(parity_pipe.transformer, parity_pipe.vae)
    plan = parity_pipe.plan(17, **SIZE)
    texts = [cases["text.features"], cases["text.features"][:4]]
    negatives = [cases["negative_text.features"], None]
    forced = [cases[f"forced_bits.step{i}"] for i in range(40)]
    apg = AdaptiveProjectedGuidance(34.0, norm_threshold=0.05)

    def run(t, n, bits):
        trace = SamplerTrace()
        state = adapter.prepare(plan, t, n, forced_bits=bits)
        run_next_scale(adapter, state, cfg=apg, trace=trace, on_step=lambda s, *_: s.index >= 39)
        return trace, state

    pair, state = run(texts, negatives, [b.repeat(2, 1, 1, 1, 1) for b in forced])
    assert state.prefix_lengths.tolist() == [7, 4, 7, 4]
    for b in range(2):
        single, _ = run(texts[b : b + 1], negatives[b : b + 1], forced)
        for i in range(40):  # 4 rows vs 2, forced codes: equal up to rounding, amplified by APG
            atol = layout_atol(single.guided[i], apg_gain(34.0))
            torch.testing.assert_close(pair.guided[i][b : b + 1], single.guided[i], atol=atol, rtol=0)


@pytest.mark.parametrize("hooks", ["sequential", "model"])
@torch.no_grad()
def test_offload_hooks_on_cpu_give_the_same_video(fast_pipe, hooks):
    """accelerate's hooks with the CPU as execution device on every component: nothing in the pipeline
    (T5, image encoding, sampling, decoding) may read a weight outside a forward, and the KV cache must
    survive the hooks' argument moves."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    image = PIL.Image.new("RGB", (40, 30), (200, 30, 90))
    kw = dict(prompt=["a cat", "dog"], image=image, num_frames=1, **SIZE, vpg_scale=2.0, output_type="pt")
    reference = fast_pipe(**kw, generator=gens(0, 1)).frames
    pipe = copy.deepcopy(fast_pipe)
    for module in (pipe.text_encoder, pipe.transformer, pipe.vae):
        if hooks == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            cpu_offload_with_hook(module, execution_device=torch.device("cpu"))
    if hooks == "sequential":
        assert pipe.transformer.word_embed.weight.device.type == "meta"
    assert torch.equal(pipe(**kw, generator=gens(0, 1)).frames, reference)


def test_diffusers_model_cpu_offload_runs_and_releases_the_vae_after_image_encoding(fast_pipe):
    """diffusers' model offload (CPU as the 'accelerator', so it runs here): same frames, twice (hooks are
    re-armed), and the VAE used early for image-to-video is offloaded before sampling."""
    kw = dict(prompt=["a cat", "dog"], image=PIL.Image.new("RGB", (40, 30), (200, 30, 90)), num_frames=1, **SIZE,
              vpg_scale=2.0, output_type="pt")
    reference = fast_pipe(**kw, generator=gens(0, 1)).frames
    pipe = copy.deepcopy(fast_pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    released = []
    for _ in range(2):  # maybe_free_model_hooks installs new hooks after every call
        vae_hook = next(h for h in pipe._all_hooks if h.model is pipe.vae)
        vae_hook.offload = lambda offload=vae_hook.offload: (released.append(True), offload())
        assert torch.equal(pipe(**kw, generator=gens(0, 1)).frames, reference)
    assert len(released) == 2


# -- image-to-video -------------------------------------------------------------------------------
def test_image_clip_bits_quantize_the_residual(fast_pipe):
    plan = fast_pipe.plan(17, **SIZE)
    first = plan.steps[0]
    bits = torch.randint(0, 2, (2, 1, 1, 1, plan.bits_of(first)), generator=torch.Generator().manual_seed(0))
    latent = fast_pipe.vae.codes_from_bits(bits, first.target, semantic=True)
    got = image_clip_bits(fast_pipe.vae, latent, plan)
    assert len(got) == sum(1 for s in plan.steps if s.clip == 0) == 11
    assert torch.equal(got[0], bits)  # the latent is exactly the first step's codes ...
    assert not got[1].any()  # ... so nothing is left for the next step (sign of a zero residual)
    for step, b in zip(plan.steps, got):
        assert b.shape == (2, *step.grid, plan.bits_of(step))


@torch.no_grad()
def test_image_forces_the_image_clip(fast_pipe):
    image = PIL.Image.fromarray((np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8))
    plan = fast_pipe.plan(17, **SIZE)
    pixels = center_crop_resize(image, 192, 336)
    assert pixels.shape == (3, 192, 336) and pixels.min() >= -1 and pixels.max() <= 1
    expected = image_clip_bits(fast_pipe.vae, fast_pipe.vae.encode(pixels[None, :, None], sample_posterior=False),
                               plan)
    runs = []
    for seed in (0, 1):
        trace = SamplerTrace()
        out = fast_pipe("a cat", image=image, num_frames=17, **SIZE, generator=gens(seed), output_type="latent",
                        trace=trace)
        for i, bits in enumerate(expected):
            assert torch.equal(trace.codes[i], bits)
        runs.append(out.frames)
    torch.testing.assert_close(runs[0][:, :, :1], runs[1][:, :, :1], atol=0, rtol=0)  # the image clip
    assert not torch.equal(runs[0][:, :, 1:], runs[1][:, :, 1:])  # the video clip is sampled
    tensor_image = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    by_tensor = fast_pipe("a cat", image=tensor_image, num_frames=17, **SIZE, generator=gens(0),
                          output_type="latent").frames
    torch.testing.assert_close(by_tensor, runs[0], atol=0, rtol=0)


def test_prefix_codes_and_image_are_validated(fast_pipe, fixture_files):
    kw = dict(prompt="a cat", num_frames=17, **SIZE, output_type="latent")
    with pytest.raises(ValueError, match="prefix_codes\\[1\\]"):
        fast_pipe(**kw, prefix_codes=[torch.zeros(1, 1, 1, 1, 16, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="prefix_codes"):
        fast_pipe(**kw, prefix_codes=[torch.full((1, 1, 1, 1, 16), 2)])
    with pytest.raises(ValueError, match="`image`"):
        fast_pipe(**kw, image=PIL.Image.new("RGB", (8, 8)), prefix_codes=[torch.zeros(1, 1, 1, 1, 16)])
    with pytest.raises(TypeError, match="`image`"):
        fast_pipe(**kw, image="photo.png")
    forced = fast_pipe(**kw, prefix_codes=[torch.ones(1, 1, 1, 1, 16, dtype=torch.long)], generator=gens(0)).frames
    free = fast_pipe(**kw, generator=gens(0)).frames
    assert not torch.equal(forced, free)


# -- bad input ---------------------------------------------------------------------------------------
def test_sizes_and_frame_counts_are_checked(fast_pipe):
    with pytest.raises(ValueError, match="`num_frames`") as info:
        fast_pipe("a cat", num_frames=20, **SIZE)
    assert "17" in str(info.value)
    with pytest.raises(ValueError, match="`height`") as info:
        fast_pipe("a cat", num_frames=1, height=208, width=336)
    assert "192x336" in str(info.value)
    with pytest.raises(ValueError, match="`height` x `width`.*scales per clip"):
        fast_pipe("a cat", num_frames=1, height=720, width=1280)  # a 0.90M size: 15 scales, repetitions for 11


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=4), st.lists(st.integers(-2, 25), max_size=3))
ARGS = {
    "prompt": st.one_of(ANY, st.lists(st.sampled_from(["a cat", "dog", ""]), max_size=3)),
    "negative_prompt": ANY,
    "num_frames": st.one_of(ANY, st.sampled_from([1, 17])),
    "num_videos_per_prompt": ANY,
    "guidance_scale": ANY,
    "guidance": st.one_of(ANY, st.sampled_from(["apg", "cfg"])),
    "apg_norm_threshold": ANY,
    "tau_image": ANY,
    "tau_video": ANY,
    "vpg_scale": ANY,
    "vpg_corruption": ANY,
    "vpg_mode": st.one_of(ANY, st.sampled_from(["full", "token", "position", "codebook"])),
    "vpg_scales": st.one_of(ANY, st.sampled_from(["all", "semantic"]), st.lists(st.integers(-1, 23), max_size=3)),
    "output_type": st.one_of(ANY, st.sampled_from(["latent"])),
    "generator": st.one_of(st.none(), st.integers(0, 3).map(lambda n: gens(*range(n)))),
    "callback_on_step_end_tensor_inputs": st.one_of(ANY, st.sampled_from([["logits"], ["latents", "logits"]])),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=ARGS))
def test_bad_input_never_crashes_deep_inside(fast_pipe, kwargs):
    kwargs = {"prompt": "a cat", "num_frames": 1, "output_type": "latent", **kwargs, **SIZE}
    try:
        fast_pipe(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        named = [name for name in [*kwargs, "height` x `width"] if f"`{name}`" in message]
        assert named, f"error does not name an argument: {message!r} for {kwargs}"


def test_from_official_checks_the_config(fixture_files):
    root, config, _, _ = fixture_files
    files = (root / "infinity_star.safetensors", root / "videovae.safetensors")
    with pytest.raises(ValueError, match="depth 4 \\(checkpoint 2\\)"):
        VPGInfinityStarPipeline.from_official(*files, config={**config, "model": {**config["model"], "depth": 4}})
    with pytest.raises(ValueError, match="vae_block_out_channels"):
        VPGInfinityStarPipeline.from_official(*files, config={**config, "vae_block_out_channels": [64] * 5})
    encoder, tokenizer = tiny_t5(32)
    with pytest.raises(ValueError, match="`text_encoder` gives 32 channels"):
        VPGInfinityStarPipeline.from_official(*files, text_encoder=encoder, tokenizer=tokenizer, config=config)


# -- MP4 -------------------------------------------------------------------------------------------
def test_export_to_video_writes_an_mp4_that_reads_back(fast_pipe, fast_video, tmp_path):
    imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed")
    frames = fast_pipe.video_processor.postprocess_video(fast_video[0].permute(0, 2, 1, 3, 4) * 2 - 1, "pil")[0]
    assert len(frames) == 17
    path = export_to_video(frames, tmp_path / "clip.mp4", fps=fast_pipe.fps)
    reader = imageio.get_reader(path, format="FFMPEG")
    assert reader.get_meta_data()["fps"] == 16
    back = np.stack([frame for frame in reader])  # list(reader) would ask len(): inf for ffmpeg streams
    reader.close()
    assert back.shape == (17, 192, 336, 3)
    # smooth synthetic frames survive H.264 closely
    ramp = np.linspace(0, 1, 336, dtype=np.float32)[None, :, None] * np.ones((192, 1, 3), dtype=np.float32)
    video = np.stack([np.roll(ramp, 8 * i, axis=1) for i in range(9)])
    path = export_to_video(video, tmp_path / "ramp.mp4", fps=16)
    back = np.stack([frame for frame in imageio.get_reader(path, format="FFMPEG")]).astype(np.float32) / 255
    assert back.shape == video.shape and np.abs(back - video).mean() < 0.02
    with pytest.raises(ValueError, match="`fps`"):
        export_to_video(video, tmp_path / "bad.mp4", fps=0)


# -- benchmark script ------------------------------------------------------------------------------
def test_clip_benchmark_runs(tmp_path):
    from benchmarks import infinity_star_clip

    result = infinity_star_clip.main(["--model", "parity", "--size", "fixture", "--frames", "1", "--no-decode",
                                      "--configs", "guidance,vpg-all", "--device", "cpu", "--dtype", "float32",
                                      "--out-md", str(tmp_path / "clip.md")])
    assert set(result["configs"]) == {"guidance", "vpg-all"}
    assert all(c["steps"] == 33 and c["sample_s"] > 0 and c["peak_bytes"] > 0 for c in result["configs"].values())
    assert "| `vpg-all` | 33 |" in (tmp_path / "clip.md").read_text()
    # the random-weight builder of the 8B runs (here at a tiny size: same code path)
    args = resolve_args(infinity_star_clip.SIZES["fixture"][0])
    pipe = infinity_star_clip.random_pipeline(
        args, "cpu", torch.float32, transformer_text_channels=64, transformer_embed_dim=64, transformer_depth=2,
        transformer_num_block_chunks=2, transformer_num_heads=2, transformer_num_key_value_heads=1,
        vae_block_out_channels=(8, 8, 8, 8, 8))
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(prompt_embeds=torch.randn(1, 3, 64), num_frames=1, **SIZE, output_type="latent").frames
    assert latents.shape == (1, 64, 1, 12, 21) and torch.isfinite(latents).all()


# -- accelerate offload ------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload needs a CUDA GPU (none found)")


@needs_cuda
def test_model_cpu_offload_gives_the_same_video(fast_pipe):
    kw = dict(prompt=["a cat", "dog"], num_frames=17, **SIZE, vpg_scale=2.0, output_type="pt")
    reference = copy.deepcopy(fast_pipe).to("cuda")(**kw, generator=gens(0, 1)).frames
    pipe = copy.deepcopy(fast_pipe)
    pipe.enable_model_cpu_offload()
    for _ in range(2):  # hooks are re-armed after a call
        frames = pipe(**kw, generator=gens(0, 1)).frames
        # the same device and shapes; 1e-4 leaves room for GPU kernels that are not run-to-run deterministic
        torch.testing.assert_close(frames, reference, atol=1e-4, rtol=0)
    assert all(p.device.type == "cpu" for p in pipe.transformer.parameters())
