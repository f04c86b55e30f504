"""Video continuation (``pipe(prompt, video=...)``) against the official ``tools/infer_video_480p.py`` run of the
tiny 480p fixture (``tests/fixtures/infinity_star_480p``: README.md says how it was made and what it holds).

The official run forces the encoded first 5 s (steps 0-62: image clip + first video clip, ``gt_leak`` 22 at
this fixture's 0.06M budget) and draws steps 63-92 with ``torch.multinomial``. Draws are replayed by forcing
the recorded bits, never by seeds (a draw repeats only from bitwise-equal probabilities).

Tolerances (float32, CPU), and why:

* guided log-odds (``logit(bit=1) - logit(bit=0)`` after APG and ``1/tau``): max |error| <= 1e-3 per step and
  mean |error| <= 1e-4 per step. APG at cfg 34 multiplies the float32 noise of ``cond - uncond`` by up to
  ``1 + 2·33`` and ``1/tau`` = 2.5 once more: the official computation is itself 3.4e-4 per logit from its
  float64 evaluation on these steps (README), so a log-odds (a difference of two logits) may be ~7e-4 apart
  between two correct float32 implementations; we measure 3.0e-4 (mean 5.7e-5). A wrong row, cache entry,
  RoPE index or head moves them by 1e-2 and more. 1e-4 on the maximum would reject the official code itself.
* encoder features (posterior sample drawn as the fixture drew it): <= 1e-4 (measured 1.5e-7).
* prefix bits: the sign of a residual. Equal except where the official residual is within 1e-5 of zero (a
  tie that float rounding of the encode may flip: the smallest is 1.4e-8 here, 60x below the features'
  measured error); none flipped on the machines we ran.
* summed codes: <= 1e-4 (measured: bitwise equal).
* decoded frames (the VAE's output before clamping, |x| up to ~280 with these random weights): <= 1e-3
  (measured 6.9e-5); the saved uint8 frames: equal except on a truncation boundary (<= 1).
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.shared import REPO, shared_path
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.models.infinity_star.conditioning import clip_frame_indices, prefix_clip_bits
from vpg_pipelines.models.infinity_star.video_vae import InfinityStarVideoVAE
from vpg_pipelines.pipelines.media_input import condition_frames
from vpg_pipelines.sampling.next_scale import SamplerTrace
from vpg_pipelines.testing import tiny_t5
from vpg_pipelines.utils import read_video

ROOT = REPO / "tests" / "fixtures" / "infinity_star_480p"
VIDEO = ROOT / "input_video.mp4"
LOGODDS_ATOL, LOGODDS_MEAN_ATOL = 1e-3, 1e-4
FEATURES_ATOL, TIE = 1e-4, 1e-5
SUMMED_ATOL, DECODED_ATOL = 1e-4, 1e-3
PREFIX_STEPS, STEPS = 63, 93


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The fixture's bits, packed little-endian along the last axis, as ``(…, d)`` integers."""
    return ((packed.long()[..., None] >> torch.arange(8)) & 1).flatten(-2)


def logodds(logits: torch.Tensor) -> torch.Tensor:
    """``(B, n, 2 d)`` logits in (bit 0, bit 1) pairs -> ``(B, n, d)`` log-odds of bit 1."""
    return logits[..., 1::2] - logits[..., 0::2]


@pytest.fixture(scope="module")
def fixture480():
    config = json.loads((ROOT / "config.json").read_text())
    cases = load_file(str(ROOT / "cases.safetensors"))
    meta = json.loads((ROOT / "cases.json").read_text())
    small = {k: config[k] for k in ("args", "model", "text_maxlen")}
    pipe = VPGInfinityStarPipeline.from_official(ROOT / "infinity_star_480p.safetensors",
                                                 shared_path("parity", "infinity_star", "videovae.safetensors"),
                                                 config=small)
    pipe.set_progress_bar_config(disable=True)
    bits = [unpack(cases[f"bits_packed.step{i}"]) for i in range(STEPS)]
    return pipe, cases, meta, config, bits


@pytest.fixture(scope="module")
def fast480(fixture480):
    """The fixture's transformer under the 480p settings with one repetition per scale, a narrow random VAE
    and a tiny T5: a cheap 10 s continuation for behaviour tests."""
    pipe = fixture480[0]
    torch.manual_seed(0)
    vae = InfinityStarVideoVAE(block_out_channels=(8, 8, 8, 8, 8), detail_scale_min_tokens=100).eval()
    encoder, tokenizer = tiny_t5(64)
    args = {**pipe.config.official_args, "image_scale_repetition": [1] * 11, "video_scale_repetition": [1] * 11}
    fast = VPGInfinityStarPipeline(pipe.transformer, vae, encoder, tokenizer, official_args=args, variant="480p")
    fast.set_progress_bar_config(disable=True)
    return fast


def _residual_margins(vae, latent, plan, clips):
    """|residual| of every quantized value of :func:`prefix_clip_bits` (same order as its bits)."""
    margins = []
    books = (vae.quantizer.lfq_semantic, vae.quantizer.lfq_detail)
    originals = [b.quantize for b in books]
    for book, original in zip(books, originals):
        def record(z, original=original):
            margins.append(z.movedim(1, -1).abs())
            return original(z)
        book.quantize = record
    try:
        prefix_clip_bits(vae, latent, plan, clips)
    finally:
        for book, original in zip(books, originals):
            book.quantize = original
    return margins


# -- reading and cropping the input -------------------------------------------------------------------
def test_frame_selection_is_the_official_readers():
    """``get_clip(0, 5, 81)`` of the official decoder, run on 14 (fps, length) cases (settings_480p.json)."""
    cases = json.loads((ROOT / "settings_480p.json").read_text())["continuation_frame_selection"]["cases"]
    for case in cases:
        fps, length = case["fps"], case["frames"]
        assert (length / fps < 5) == case["refused"], case
        if not case["refused"]:
            assert clip_frame_indices(length, fps, 5, 81).tolist() == case["indices"], case
        frames = [np.full((4, 6, 3), i % 256, dtype=np.uint8) for i in range(length)]
        if case["refused"]:
            with pytest.raises(ValueError, match=r"^`video` is 4\.97 s long \(149 frames at 29\.97 fps\)"):
                condition_frames(frames, fps, 16, 5, 81, 16, 32)
        else:
            picked = condition_frames(frames, fps, 16, 5, 81, 16, 32)
            assert picked.shape == (81, 16, 32, 3) and picked.dtype == torch.uint8
            assert picked[:, 0, 0, 0].tolist() == [i % 256 for i in case["indices"]]


def test_video_file_and_frames_give_the_official_condition(fixture480):
    """The mp4 read with imageio-ffmpeg equals what the official decoder (decord) read; the official
    ``transform`` of it equals the fixture's; in-memory forms of the same video give the same frames."""
    _, cases, meta, _, _ = fixture480
    indices = cases["input.clip_frame_indices"].tolist()
    frames, fps, decoded = read_video(VIDEO, lambda rate: clip_frame_indices(144, rate, 5, 81))
    assert fps == meta["input_video"]["fps"] == 24 and decoded == indices[-1] + 1 == 120
    assert torch.equal(torch.from_numpy(np.stack(frames)), cases["input.clip_frames_rgb"])
    condition = condition_frames(VIDEO, None, 16, 5, 81, 192, 336)
    assert torch.equal(condition[[0, 80]], cases["transform.frames_uint8"])
    everything, _, _ = read_video(VIDEO)
    assert len(everything) == meta["input_video"]["frames"]
    as_array = np.stack(everything)
    for form in (as_array, torch.from_numpy(as_array).permute(0, 3, 1, 2).float() / 255,
                 [PIL.Image.fromarray(f) for f in everything]):
        assert torch.equal(condition_frames(form, 24, 16, 5, 81, 192, 336), condition)
    # without video_fps, frames in memory are taken at the model's 16 fps: 144 frames are 9 s, first 80 used
    assert torch.equal(condition_frames(as_array, None, 16, 5, 81, 16, 32),
                       condition_frames(as_array[:80], 16, 16, 5, 81, 16, 32))


# -- parity with the official continuation ---------------------------------------------------------------
@torch.no_grad()
def test_continuation_encodes_and_forces_the_official_prefix(fixture480):
    """``pipe(video=...)`` end to end up to the first generated step: the encoder's features (posterior drawn
    from ``generator`` as the fixture drew it), the forced bits of steps 0-62, and step 63's log-odds."""
    pipe, cases, _, _, bits = fixture480
    seen, trace = {}, SamplerTrace()
    encode = pipe.vae.encode

    def recording_encode(*args, **kwargs):
        seen["features"] = encode(*args, **kwargs)
        return seen["features"]

    def stop_after_first_generated(p, i, scale, kwargs):
        p._interrupt = i >= PREFIX_STEPS
        return {}

    pipe.vae.encode = recording_encode
    try:
        out = pipe(prompt_embeds=cases["text.features"][None], video=str(VIDEO), sample_posterior=True,
                   generator=torch.Generator().manual_seed(1234), vpg_scale=1.0, output_type="latent", trace=trace,
                   callback_on_step_end=stop_after_first_generated)
    finally:
        del pipe.vae.encode
    assert pipe.resolve_call(prompt_embeds=cases["text.features"][None], video=str(VIDEO)).arguments[
        "num_frames"] == 161
    features = seen["features"]
    assert features.shape == cases["encode.raw_features"].shape
    features_err = (features - cases["encode.raw_features"]).abs().max().item()
    assert features_err <= FEATURES_ATOL
    plan = pipe.plan(161, 192, 336)
    ours = prefix_clip_bits(pipe.vae, features, plan, 2)
    margins = _residual_margins(pipe.vae, cases["encode.raw_features"], plan, 2)
    flipped = 0
    for i in range(PREFIX_STEPS):
        assert torch.equal(trace.codes[i], ours[i]), i  # what the encode gave is what was forced
        differ = trace.codes[i] != bits[i]
        assert bool((margins[i][differ] < TIE).all()), f"step {i}: a bit differs away from a tie"
        flipped += int(differ.sum())
    assert sorted(trace.codes) == list(range(PREFIX_STEPS + 1)) and out.frames.shape[2] == 41
    if flipped == 0:  # step 63 sees the forced clips only: its log-odds are the official ones
        err = (logodds(trace.guided[PREFIX_STEPS]) - cases[f"guided_logodds.step{PREFIX_STEPS}"]).abs()
        assert err.max().item() <= LOGODDS_ATOL and err.mean().item() <= LOGODDS_MEAN_ATOL
    print(f"continuation: features max abs error {features_err:.2e}, prefix bits flipped at ties: {flipped}")


@torch.no_grad()
def test_replay_of_the_official_continuation(fixture480):
    """Every step forced to the official bits (the prefix: the encoded input; then the official draws): the same
    codes at every step, the guided log-odds of the 30 generated steps, the summed codes, and the decoded
    161-frame video as the official script returns it."""
    pipe, cases, meta, _, bits = fixture480
    logits, latents = {}, {}

    def record(p, i, scale, kwargs):
        if i >= PREFIX_STEPS:
            logits[i] = kwargs["logits"].clone()
        if i == STEPS - 1:
            latents["summed"] = kwargs["latents"].clone()
        return {}

    trace = SamplerTrace()
    out = pipe(prompt_embeds=cases["text.features"][None], num_frames=161, prefix_codes=bits, vpg_scale=1.0,
               output_type="pt", trace=trace, callback_on_step_end=record,
               callback_on_step_end_tensor_inputs=["logits", "latents"])
    assert meta["generated_steps"] == list(range(PREFIX_STEPS, STEPS)) and pipe.num_timesteps == STEPS
    worst = worst_mean = 0.0
    for i in range(STEPS):
        assert torch.equal(trace.codes[i], bits[i]), i
    for i in meta["guided_logits_stored_for_steps"]:
        err = (logodds(logits[i]) - cases[f"guided_logodds.step{i}"]).abs()
        worst, worst_mean = max(worst, err.max().item()), max(worst_mean, err.mean().item())
        assert err.max().item() <= LOGODDS_ATOL and err.mean().item() <= LOGODDS_MEAN_ATOL, i
    summed_err = (latents["summed"] - cases["summed_codes"]).abs().max().item()
    assert summed_err <= SUMMED_ATOL
    # the decoded frames: ours are clamped to [-1, 1] and mapped to [0, 1]
    picked = meta["decoded_frames"]
    assert out.frames.shape == (1, 161, 3, 192, 336)
    expected = (cases["decoded.frames"].clamp(-1, 1) + 1) / 2  # (1, 3, 3, H, W): frames 1, 81, 160
    frames_err = (out.frames[:, picked].permute(0, 2, 1, 3, 4) - expected).abs().max().item()
    assert frames_err <= DECODED_ATOL / 2  # clamping and the halving only shrink the decoder's error
    # as the official script saves them: (x + 1) / 2, clamped, x 255 truncated, frame 0 = frame 1 (BGR there)
    saved = (out.frames[0, meta["output_frames"]] * 255).to(torch.uint8).permute(0, 2, 3, 1)
    official = cases["output.frames_uint8_bgr"].flip(-1)
    diff = (saved.int() - official.int()).abs()
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= diff.numel() // 10_000
    assert torch.equal(out.frames[:, 0], out.frames[:, 1])
    print(f"continuation replay: log-odds max {worst:.2e} (worst step mean {worst_mean:.2e}), summed codes "
          f"{summed_err:.2e}, frames {frames_err:.2e}, saved uint8 values off by 1: {int((diff > 0).sum())}")


# -- behaviour -------------------------------------------------------------------------------------------
@torch.no_grad()
def test_continuation_keeps_the_input_and_samples_the_rest(fast480):
    """Frames 0-80 are the input's forced codes (the same for every seed: posterior mean), 81-160 are sampled;
    the decoded output is the whole 10 s video."""
    video, _, _ = read_video(VIDEO)
    kw = dict(video=np.stack(video), video_fps=24, output_type="latent", vpg_scale=1.0)
    runs = [fast480("a cat", generator=torch.Generator().manual_seed(s), **kw).frames for s in (0, 1)]
    assert runs[0].shape == (1, 64, 41, 12, 21)
    assert torch.equal(runs[0][:, :, :21], runs[1][:, :, :21])
    assert not torch.equal(runs[0][:, :, 21:], runs[1][:, :, 21:])
    batch = fast480(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).frames
    assert torch.equal(batch[:, :, :21], runs[0][:, :, :21].expand(2, -1, -1, -1, -1))
    frames = fast480("a cat", video=str(VIDEO), generator=torch.Generator().manual_seed(0), vpg_scale=1.0,
                     output_type="np").frames
    assert frames.shape == (1, 161, 192, 336, 3)


def test_continuation_refusals_name_the_argument(fast480, fast_pipe):
    video = [PIL.Image.new("RGB", (40, 24))] * 80  # exactly 5 s at the default 16 fps: accepted
    call = fast480.resolve_call(prompt="a cat", video=video)
    assert call.arguments["num_frames"] == 161 and call.condition_video.shape == (1, 81, 192, 336, 3)
    assert call.conditioning_steps == sum(1 for s in call.plan.steps if s.clip < 2) == 22
    refusals = [
        (dict(video=video, num_frames=81), r"^`num_frames` must be 161 \(10 s\) with `video`"),
        (dict(video=video[:79]), r"^`video` is 4\.94 s long \(79 frames at 16 fps\); continuation needs at least 5 s"),
        (dict(video=video, video_fps=30), r"^`video` is 2\.67 s long"),
        (dict(video=str(ROOT / "missing.mp4")), r"^`video` '.*missing\.mp4' cannot be read as a video"),
        (dict(video=str(ROOT / "config.json")), r"^`video` '.*config\.json' cannot be read as a video"),
        (dict(video=video, image=video[0]), r"^Pass at most one of `image`.*got `image` and `video`"),
        (dict(video=video, video_fps=0), r"^`video_fps` must be a positive number"),
        (dict(video_fps=16), r"^`video_fps` was given without `video`"),
        (dict(video=video, sample_posterior=1), r"^`sample_posterior` must be a bool"),
        (dict(video=[video, video, video]), r"^`video` must be one video"),
        (dict(video=np.zeros((8, 8, 3))), r"^`video` must be one video"),
    ]
    for kwargs, message in refusals:
        with pytest.raises((ValueError, TypeError), match=message) as info:
            fast480.resolve_call(prompt="a cat", **kwargs)
        assert "\n" not in str(info.value), message
    # a model whose script makes no 10 s video (the 720p settings: up to 81 frames) refuses continuation
    with pytest.raises(ValueError, match=r"^`video` \(continuation\) makes 10 s videos \(161 frames\), which this "
                                         r"model does not make"):
        fast_pipe.resolve_call(prompt="a cat", video=video)
