"""VPGInfinityStarInteractPipeline: replay of the official interact fixture (two windows, forced codes), the
official decode and reference encode, and the pipeline's contract (clips, chaining, generators, VPG, checks)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from tests.helpers.interact import SIZE, STEPS, context_latents
from tests.helpers.numerics import assert_same_steps, cfg_gain, layout_atol, record_draws, vpg_gain
from tests.helpers.shared import cuda_only
from vpg_pipelines import VPGInfinityStarInteractPipeline
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.models.adapter import RowBatch
from vpg_pipelines.models.infinity_star.conditioning import center_crop_resize
from vpg_pipelines.models.infinity_star.interact import InfinityStarInteractAdapter, next_context
from vpg_pipelines.models.kv_cache import KVCache

LOGITS_ATOL = 1e-4  # fp32 CPU, accumulation order only: the fixture's making replay differed by ~1e-6
SUMMED_ATOL = 1e-4  # sums of interpolated +-codes: interpolation rounding only
ENCODE_ATOL = 1e-4  # the encoder's float32 rounding on values up to 0.45
PIXELS_ATOL = 1e-3  # frame 0 after the official transform, stored as float16 in [-1, 1]
# the decodes differ by float32 rounding (~1e-5 on values ~1): where a value in [-1, 1] is within 1e-4 of a step of
# the official truncating uint8 cast (127.5 * 1e-4 on the 0..255 scale), the cast may land on either side
UINT8_NEAR_STEP = 127.5 * 1e-4


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def fixture_embeds(cases):
    """The two clips' prompt features as ``prompt_embeds`` + mask (prompt 0 is the reference's: never used)."""
    rows = [cases["prompt1.features"], cases["prompt2.features"]]
    mask = pad_sequence([torch.ones(len(r)) for r in rows], batch_first=True)
    return pad_sequence(rows, batch_first=True), mask


# -- parity ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_replay_of_both_windows_reproduces_the_official_steps(interact_pipe, interact_fixture):
    _, cases, meta = interact_fixture
    embeds, mask = fixture_embeds(cases)
    logits, traces = {}, []

    def record(pipe, i, scale, kwargs):
        logits[i] = kwargs["logits"].clone()
        assert pipe.current_clip == i // STEPS
        return {}

    forced = [[cases[f"clip{k}.forced_bits.step{i}"] for i in range(STEPS)] for k in (1, 2)]
    out = interact_pipe(prompt_embeds=embeds, prompt_attention_mask=mask, context_latents=context_latents(cases),
                        vpg_scale=1.0, prefix_codes=forced, output_type="latent", trace=traces,
                        callback_on_step_end=record, callback_on_step_end_tensor_inputs=["logits"],
                        generator=torch.Generator().manual_seed(meta["g_seed"]))
    plan = interact_pipe.plan(**SIZE)
    assert interact_pipe.num_timesteps == 2 * STEPS == len(logits) and len(plan.steps) == STEPS
    frames = meta["logit_frames"]
    worst = 0.0
    for k in (1, 2):
        for step in plan.steps:
            assert torch.equal(traces[k - 1].codes[step.index], forced[k - 1][step.index].long())
            ours = logits[(k - 1) * STEPS + step.index].view(1, *step.grid, -1)[:, frames]
            err = (ours - cases[f"clip{k}.guided_logits.step{step.index}"]).abs().max().item()
            worst = max(worst, err)
            assert err <= LOGITS_ATOL, (k, step.index, err)
        assert (out.clips[k - 1] - cases[f"clip{k}.summed_codes"]).abs().max().item() <= SUMMED_ATOL
    print(f"interact replay: guided logits max abs error {worst:.2e}")
    # the story's state: the reference's first latent frame, then [last frame of clip 1, clip 2]
    reference = cases["reference.features"]
    expected = torch.cat([reference[:, :, :1], out.clips[0][:, :, -1:], out.clips[1]], dim=2)
    assert torch.equal(out.context_latents, expected)
    assert torch.equal(out.frames, torch.cat(out.clips, dim=2))


@torch.no_grad()
def test_clip_decode_is_the_official_one(interact_pipe, interact_fixture):
    """Clip 1 (the decode of [context frames 1..20, the clip], last 80 of 157 frames) against the official float
    decode and its uint8 BGR frames. One clip: the decode is the same function for every clip."""
    _, cases, meta = interact_fixture
    video = interact_pipe.decode_clip(cases["reference.features"], cases["clip1.summed_codes"])
    assert video.shape == (1, 3, 80, 192, 336)
    ours = video[:, :, meta["output_frames"]]
    stored = cases["clip1.video_fp16"].float().clamp(-1, 1)  # the official decode, before its clamp
    assert ((ours - stored).abs() <= 2e-3 + 1e-3 * stored.abs()).all()  # float16 storage: 2^-11 relative
    scaled = ((ours + 1) / 2).clamp(0, 1).mul(255)
    bgr = scaled.to(torch.uint8).permute(0, 2, 3, 4, 1).flip(-1)[0]  # the official conversion (truncating)
    diff = bgr.int() - cases["clip1.frames_bgr_uint8"].int()
    near = (scaled - scaled.round()).abs().permute(0, 2, 3, 4, 1).flip(-1)[0] < UINT8_NEAR_STEP
    assert bool((diff.abs() <= 1).all()) and bool(near[diff != 0].all())


@torch.no_grad()
def test_reference_encode_is_the_official_one(interact_pipe, interact_fixture):
    """The official transform of the 81 frames and the encoder's posterior sample (drawn from seed 1234 as the
    fixture's making run seeded the global RNG)."""
    _, cases, meta = interact_fixture
    frames = cases["reference.video_rgb"].numpy()
    pixels = center_crop_resize(PIL.Image.fromarray(frames[0]), 192, 336)
    assert (pixels - cases["reference.pixels_frame0"][0].float()).abs().max().item() <= PIXELS_ATOL
    latents = interact_pipe.encode_reference(frames, 192, 336, torch.Generator().manual_seed(meta["encode_seed"]),
                                             sample_posterior=True)
    assert (latents - cases["reference.features"]).abs().max().item() <= ENCODE_ATOL


# -- the call ------------------------------------------------------------------------------------------------------
def test_resolve_call_and_defaults(fast_interact_pipe, interact_fixture):
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    frames = cases["reference.video_rgb"].numpy()
    call = pipe.resolve_call(prompt=["a cat", "a dog", "a fox"], video=frames)
    a = call.arguments
    assert (a["guidance"], a["guidance_scale"], a["tau"]) == ("cfg", 3.0, 0.5)  # the interact script's
    assert (a["height"], a["width"]) == (192, 336)  # the reference's ratio (32x56) at the fixture's budget
    assert call.num_clips == 3 and len(call.steps) == 11 and call.total_steps == 33 and call.batch == 1
    assert call.with_null and call.reference.frames == 81
    guided = call.prefix.guided_steps(list(call.steps), call.num_scales)
    assert guided == {s.index for s in call.steps if s.semantic and s.index > 0}  # "semantic": scales 0..7
    from_context = pipe.resolve_call(prompt="a cat", context_latents=context_latents(cases), num_videos_per_prompt=2)
    assert from_context.arguments["height"] == 192 and from_context.batch == 2
    assert pipe.size_for(720, 1280) == (192, 336) and pipe.size_for(400, 400) == (256, 256)


@torch.no_grad()
def test_clips_are_chained_decoded_and_joined(fast_interact_pipe, interact_fixture, monkeypatch):
    """Each clip is decoded from the context before it and its own latents; the stories' frames are the clips one
    after another; callbacks run per step (one count through all clips) and per clip. The decode itself is the
    official one (test above): here a cheap stand-in records what it is given."""
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    decoded = []

    def fake_decode(context, latents):
        decoded.append((context.clone(), latents.clone()))
        video = latents[:, :3].repeat_interleave(4, dim=2).repeat_interleave(16, 3).repeat_interleave(16, 4)
        return video.tanh()

    monkeypatch.setattr(pipe, "decode_clip", fake_decode)
    steps, clip_ends = [], []

    def on_step(p, i, scale, kwargs):
        steps.append((i, p.current_clip, tuple(kwargs["latents"].shape)))
        return {}

    def on_clip(p, k, kwargs):
        clip_ends.append((k, kwargs["frames"], kwargs["latents"]))

    start = context_latents(cases)
    pt = pipe(["a cat", "a red dog"], context_latents=start, generator=gens(3), callback_on_step_end=on_step,
              callback_on_clip_end=on_clip, output_type="pt")
    assert [s[0] for s in steps] == list(range(22)) and pipe.num_timesteps == 22
    assert [s[1] for s in steps] == [k for k in range(2) for _ in range(11)]
    assert {s[2] for s in steps} == {(1, 64, 20, 12, 21)}
    assert pt.frames.shape == (1, 160, 3, 192, 336) and len(pt.clips) == 2 == len(clip_ends) == len(decoded)
    context = start[:, :, 1:]
    for k, (index, frames, latents) in enumerate(clip_ends):
        assert index == k and torch.equal(decoded[k][0], context) and torch.equal(decoded[k][1], latents)
        context = next_context(context, latents)
        assert torch.equal(frames, pt.clips[k]) and torch.equal(pt.frames[:, 80 * k : 80 * (k + 1)], pt.clips[k])
        expected = (fake_decode(*decoded[k]) / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(pt.clips[k], expected, atol=1e-6, rtol=0)
    assert torch.equal(pt.context_latents, torch.cat([start[:, :, :1], context], dim=2))
    one = dict(prompt="a cat", context_latents=start, generator=gens(3))
    np_out = pipe(**one, output_type="np")
    pil = pipe(**one, output_type="pil")
    assert np_out.frames.shape == (1, 80, 192, 336, 3) and len(pil.frames) == 1 and len(pil.frames[0]) == 80
    assert np.abs(pt.clips[0].permute(0, 1, 3, 4, 2).numpy() - np_out.frames).max() < 1e-6
    assert np.abs(np.asarray(pil.frames[0][40], dtype=np.float32) / 255 - np_out.frames[0, 40]).max() <= 1 / 255 + 1e-6
    assert len(pil.clips) == 1 and pil.clips[0][0][79] is pil.frames[0][79]


@torch.no_grad()
def test_reseeding_and_continuing_a_story(fast_interact_pipe, interact_fixture):
    """With ``reseed_each_clip`` (official) every clip draws from the generator's seed: clip 2 of a call is what a
    call continuing clip 1's state makes; the generator passed is not advanced."""
    _, cases, _ = interact_fixture
    pipe, start = fast_interact_pipe, context_latents(cases)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    two = pipe(["a cat", "a dog"], context_latents=start, generator=generator, output_type="latent", vpg_scale=1.0)
    assert torch.equal(generator.get_state(), state)
    after_one = torch.cat([start[:, :, :1], next_context(start[:, :, 1:], two.clips[0])], dim=2)
    second = pipe("a dog", context_latents=after_one, generator=gens(7)[0], output_type="latent", vpg_scale=1.0)
    assert torch.equal(second.frames, two.clips[1]) and torch.equal(second.context_latents, two.context_latents)


def test_clip_generators():
    """Reseeding: fresh generators from each one's initial seed (the official rule); otherwise the same stream."""
    from vpg_pipelines.pipelines.pipeline_vpg_infinity_star_interact import _clip_generator

    generators = gens(3, 4)
    for g in generators:
        torch.rand(5, generator=g)  # a used generator: its stream has moved on
    fresh = _clip_generator(generators, reseed=True)
    assert [g.initial_seed() for g in fresh] == [3, 4] and all(f is not g for f, g in zip(fresh, generators))
    assert torch.equal(torch.rand(3, generator=fresh[0]), torch.rand(3, generator=gens(3)[0]))
    assert _clip_generator(generators, reseed=False) is generators and _clip_generator(None, reseed=True) is None


@torch.no_grad()
def test_stories_in_a_batch_equal_stories_alone(fast_interact_pipe, interact_fixture):
    """2 stories vs 1: equal up to rounding; the single run follows the batch's draws (numerics.record_draws)."""
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    kw = dict(context_latents=context_latents(cases), output_type="latent", vpg_scale=2.0, vpg_corruption=0.5)
    batch_traces = []
    with record_draws() as reference:
        batch = pipe("a cat", num_videos_per_prompt=2, generator=gens(10, 11), trace=batch_traces, **kw)
    traces = []
    with record_draws(replay=reference) as replayed:
        one = pipe("a cat", generator=gens(10), trace=traces, **kw)
    assert_same_steps(batch_traces[0], traces[0], replayed, cfg_gain(3.0) * vpg_gain(2.0), rows=slice(0, 1))
    torch.testing.assert_close(batch.frames[:1], one.frames, atol=1e-5, rtol=0)
    assert not torch.equal(batch.frames[0], batch.frames[1])


@torch.no_grad()
def test_vpg_corrupts_the_steps_and_keeps_the_conditions_clean(fast_interact_pipe, interact_fixture):
    """The corrupted branch of a guided step is the step's corrupted input attending to the clean text and clean
    conditions (they are conditioning, not generated prefix): recomputed here from a fresh prefill."""
    _, cases, _ = interact_fixture
    pipe, start = fast_interact_pipe, context_latents(cases)
    traces = []
    pipe("a cat", context_latents=start, generator=gens(1), output_type="latent", vpg_scale=2.0,
         vpg_corruption=0.5, trace=traces)
    trace, plan = traces[0], pipe.plan(**SIZE)
    guided = sorted(trace.corrupted)
    assert guided == [s.index for s in plan.steps if s.semantic_head and s.index > 0]
    assert trace.rows[guided[0]] == 4 and trace.rows[guided[-1] + 1] == 2  # the corrupted rows left after
    adapter = InfinityStarInteractAdapter(pipe.transformer, pipe.vae)
    text = pipe.encode_prompt([pipe.caption("a cat", 81)])
    state = adapter.prepare_window(plan, text, None, start[:, :, 1:], start[:, :, :1])
    cache = KVCache(adapter.num_layers, 2, adapter.num_prefix_tokens(state))
    adapter.prefill(state, cache)
    vpg = PrefixGuidance(2.0, 0.5)
    for index in guided[:3]:
        step = adapter.steps(state)[index]
        content, positions = vpg.corrupt(trace.inputs[index].content, trace.inputs[index].position_ids,
                                         trace.patterns[index])
        batch = RowBatch(torch.arange(2), content.repeat(2, 1, 1), positions.repeat(2, 1), [step])
        logits = adapter.forward(state, batch, cache)
        expected = 3.0 * logits[:1] - 2.0 * logits[1:]
        atol = layout_atol(expected, cfg_gain(3.0))
        torch.testing.assert_close(trace.corrupted[index], expected, atol=atol, rtol=0)


def test_a_reference_file_is_read_with_its_frame_rate(fast_interact_pipe, tmp_path, monkeypatch):
    """A file: its last 5 s as 81 frames at its own rate (official); each frame here is one grey level."""
    from vpg_pipelines import export_to_video

    levels = np.arange(100) * 2 + 20
    frames = [np.full((32, 56, 3), level, dtype=np.uint8) for level in levels]
    path = export_to_video(frames, tmp_path / "ref.mp4", fps=16, quality=10)
    seen = {}

    def fake_encode(pixels, generator=None, sample_posterior=True):
        seen["pixels"] = pixels
        return torch.zeros(1, 64, 21, 12, 21)

    monkeypatch.setattr(fast_interact_pipe.vae, "encode", fake_encode)
    fast_interact_pipe.encode_reference(str(path), 192, 336)
    means = ((seen["pixels"][0].mean(dim=(0, 2, 3)) + 1) / 2 * 255).tolist()
    chosen = [20, 20] + list(range(21, 100))  # linspace(20, 99, 81) truncated: frame 20 twice (official rule)
    assert np.abs(np.array(means) - levels[chosen]).max() < 3  # H.264 rounding of flat grey frames
    short = export_to_video(frames[:48], tmp_path / "short.mp4", fps=16)
    with pytest.raises(ValueError, match=r"`video` has 48 frames at 16 fps .* at least 5 s"):
        fast_interact_pipe.encode_reference(str(short), 192, 336)


def _bad(name):
    """A call (over a valid one from the fixture's context) that must be refused, and the message."""
    start = context_latents
    cases = {
        "no source": ({"context_latents": None}, "exactly one of `video`"),
        "two sources": ({"video": lambda c: c["reference.video_rgb"].numpy()}, "exactly one of `video`"),
        "no prompt": ({"prompt": []}, "`prompt` must be"),
        "context shape": ({"context_latents": lambda c: start(c)[:, :, 1:]}, "`context_latents` must be"),
        "size vs context": ({"height": 480, "width": 848}, "`context_latents` are 12x21"),
        "missing file": ({"context_latents": None, "video": "missing.mp4"}, "`video` 'missing.mp4': no such file"),
        "frame layout": ({"context_latents": None, "video": np.zeros((81, 32, 56))}, "`video` must be"),
        "negatives": ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]},
                      "`negative_prompt` has 3 entries for 2 clips"),
        "codes per clip": ({"prefix_codes": [None, None]}, "`prefix_codes` must be a list with one entry per clip"),
        "code shape": ({"prefix_codes": [[torch.zeros(1, 20, 1, 1, 64, dtype=torch.long)]]},
                       r"`prefix_codes\[0\]\[0\]`"),
        "generators": ({"num_videos_per_prompt": 2, "generator": gens(1)}, "`generator`"),
        "tau": ({"tau": 0}, "`tau`"),
        "reseed": ({"reseed_each_clip": "yes"}, "`reseed_each_clip` must be a bool"),
        "output": ({"output_type": "gif"}, "`output_type`"),
    }
    return cases[name]


BAD = ["no source", "two sources", "no prompt", "context shape", "size vs context", "missing file", "frame layout",
       "negatives", "codes per clip", "code shape", "generators", "tau", "reseed", "output"]


@pytest.mark.parametrize("name", BAD)
def test_bad_arguments_are_refused_naming_them(fast_interact_pipe, interact_fixture, name):
    _, cases, _ = interact_fixture
    changes, message = _bad(name)
    call = {"prompt": "a cat", "context_latents": context_latents(cases)}
    call.update({k: v(cases) if callable(v) else v for k, v in changes.items()})
    with pytest.raises((ValueError, TypeError), match=message) as err:
        fast_interact_pipe.resolve_call(**call)
    assert "\n" not in str(err.value)


def test_a_short_reference_in_memory_is_refused_when_read(fast_interact_pipe):
    frames = np.zeros((40, 32, 56, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"`video` has 40 frames at 16 fps \(2.50 s\); the reference must be at least"):
        fast_interact_pipe("a cat", video=frames, output_type="latent")


def test_save_and_load_keep_the_interact_settings(fast_interact_pipe, tmp_path):
    fast_interact_pipe.save_pretrained(tmp_path / "saved")
    loaded = VPGInfinityStarInteractPipeline.from_pretrained(tmp_path / "saved")
    assert type(loaded) is VPGInfinityStarInteractPipeline
    assert loaded.config.official_args == fast_interact_pipe.config.official_args
    assert loaded.config.prompt_suffix == "" and loaded.call_defaults["tau"] == 0.5


@cuda_only("placing components on two devices needs a GPU")
@torch.no_grad()
def test_components_on_different_devices(fast_interact_pipe, interact_fixture):
    """The transformer on the GPU, the text encoder and the VAE elsewhere (the CPU here; a second GPU in use):
    the call moves tensors between them and equals a one-device run up to the GPU's rounding."""
    _, cases, _ = interact_fixture
    pipe = fast_interact_pipe
    kw = dict(prompt="a cat", context_latents=context_latents(cases), generator=gens(0), output_type="latent",
              vpg_scale=1.0, prefix_codes=None)
    traces_cpu, traces_split = [], []
    with record_draws() as reference:
        cpu = pipe(**kw, trace=traces_cpu)
    pipe.transformer.to("cuda")
    try:
        assert pipe.component_device("transformer").type == "cuda" and pipe.component_device("vae").type == "cpu"
        with record_draws(replay=reference):
            split = pipe(**kw, trace=traces_split)
    finally:
        pipe.transformer.to("cpu")
    assert split.frames.device.type == "cpu"
    torch.testing.assert_close(split.frames, cpu.frames, atol=1e-3, rtol=0)
