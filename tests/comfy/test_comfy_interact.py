"""VPG Interact Sampler: InfinityStar-Interact's clips from the lines of ``prompts``, continuing a ComfyUI ``VIDEO``
or another Interact Sampler's ``story``.

Model: the Interact fixture's transformer with one repetition per scale, a narrow random VAE and a tiny T5
(``tests/helpers/interact.py``: ``fast_interact_pipe``). A clip of the Interact window costs seconds even on
this model, so most tests record the call the node makes instead of sampling, and the one real run makes one clip
from the fixture's story (no reference to encode), with a cheap stand-in for the decode and the previews (the
decode itself is tested against the official one in tests/pipelines).
"""

from __future__ import annotations

import re
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comfy_nodes import api, host, interact
from comfy_nodes.accelerate import VPGAccelerate
from comfy_nodes.conditioning import VPGTextEncode
from comfy_nodes.guidance import VPGAPG, VPGCFG, VPGPrefixGuidance
from comfy_nodes.interact import VPGInteractSampler
from comfy_nodes.model import Story, VPGModel, default_call
from comfy_nodes.samplers import VPGVideoSampler
from tests.helpers.comfy import REPO, run
from tests.helpers.interact import context_latents
from vpg_pipelines import VPGInfinityStarInteractPipeline, VPGInfinityStarPipeline
from vpg_pipelines.pipelines.reference_video import reference_frames
from vpg_pipelines.registry import kind_of

TITLE = "VPG Interact Sampler"
SOURCE = "tiny interact"
WIDGETS = dict(negative_prompt="", seed=0, batch_size=1, tau=0.5)
VIDEO_FILE = REPO / "tests" / "fixtures" / "infinity_star_480p" / "input_video.mp4"  # 6 s, 24 fps, lossless


@pytest.fixture(scope="module")
def model(fast_interact_pipe) -> VPGModel:
    return VPGModel(fast_interact_pipe, kind_of(fast_interact_pipe), SOURCE)


@pytest.fixture(scope="module")
def story(interact_fixture) -> Story:
    """A story that ends where the fixture's reference encoding ends."""
    return Story(context_latents(interact_fixture[1]), SOURCE)


def uint8_frames(count: int, height: int = 24, width: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def as_video(frames: np.ndarray, fps: float):
    """A ComfyUI ``VIDEO`` of uint8 frames: float images in [0, 1] (F, H, W, 3), as Load Video gives them."""
    return host.video(torch.from_numpy(frames).float() / 255, fps)


def as_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [0, 1] -> ``(F, H, W, 3)`` uint8."""
    return (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def sample(model, prompts="a cat walks in\nit sits down", **inputs):
    return run(VPGInteractSampler, model=model, prompts=prompts, **{**WIDGETS, **inputs})


def recorded(monkeypatch) -> dict:
    """The node's pipeline call, recorded instead of run (what the pipeline would get)."""
    seen = {}

    def record(node_title, pipe, call, prepare=None, widgets=None):
        seen.update(call)
        clips = len(call["prompt"])
        return SimpleNamespace(frames=torch.zeros(1, 80 * clips, 3, 4, 4), context_latents=torch.zeros(1, 64, 22, 1, 1))

    monkeypatch.setattr(interact, "run_pipeline", record)
    return seen


def test_prompt_lines_reference_and_guidance_chain_reach_the_pipeline(model, monkeypatch):
    """One prompt per non-blank line; the reference's 81 frames are the ones the pipeline itself picks from the same
    frames at 16 fps (its last 5 s, the official rule); CFG -> Prefix Guidance become the pipeline's arguments."""
    seen = recorded(monkeypatch)
    guided = run(VPGPrefixGuidance, model=run(VPGCFG, model=model, cfg=3.0)[0], vpg_scale=1.5, corruption=0.1,
                 mode="full", refresh="persistent", scales="semantic")[0]
    source = uint8_frames(100)  # 6.25 s at 16 fps
    frames, clip, story = sample(guided, prompts="  a cat walks in\n\n it sits down \n", video=as_video(source, 16),
                                 seed=5, batch_size=2)
    assert seen["prompt"] == ["a cat walks in", "it sits down"] and seen["negative_prompt"] is None
    assert seen["num_videos_per_prompt"] == 2 and [g.initial_seed() for g in seen["generator"]] == [5, 6]
    assert (seen["guidance_scale"], seen["guidance"], seen["tau"]) == (3.0, "cfg", 0.5)
    assert (seen["vpg_scale"], seen["vpg_corruption"], seen["vpg_scales"]) == (1.5, 0.1, "semantic")
    assert seen["context_latents"] is None and seen["output_type"] == "pt"
    official = np.stack([np.asarray(f) for f in reference_frames(source, 81, 5, default_fps=16)])
    assert np.array_equal(as_uint8(seen["video"]), official)
    assert frames.shape == (160, 4, 4, 3) and clip.get_components().frame_rate == 16
    assert isinstance(story, Story) and story.source == SOURCE
    # the call the node makes resolves (ComfyUI's GPU planning takes the same call; planning it costs seconds here)
    call = {k: v for k, v in seen.items() if not k.startswith("callback")}
    assert model.pipeline.resolve_call(**call).total_steps == 22  # 11 steps per clip


def test_a_video_file_gives_the_frames_the_pipeline_reads_from_that_file(model, monkeypatch):
    """The reference is chosen at the VIDEO's own rate (24 fps here), as the pipeline chooses from the file: with
    ComfyUI, its own VIDEO of the file (what Load Video gives, decoded by PyAV)."""
    imageio = pytest.importorskip("imageio.v2", reason="the `video` extra (imageio, imageio-ffmpeg) is not installed: "
                                                       "the pipeline cannot read the file to compare with")
    seen = recorded(monkeypatch)
    if api.COMFYUI:
        from comfy_api.latest import InputImpl

        video = InputImpl.VideoFromFile(str(VIDEO_FILE))
    else:
        reader = imageio.get_reader(str(VIDEO_FILE), format="FFMPEG")
        video = as_video(np.stack(list(reader.iter_data())), reader.get_meta_data()["fps"])
        reader.close()
    sample(model, video=video)
    official = np.stack([np.asarray(f) for f in reference_frames(str(VIDEO_FILE), 81, 5, default_fps=16)])
    assert official.shape == (81, 40, 80, 3) and np.array_equal(as_uint8(seen["video"]), official)


def test_a_story_is_continued_and_apg_and_negative_reach_the_pipeline(model, story, monkeypatch):
    seen = recorded(monkeypatch)
    apg = run(VPGAPG, model=model, cfg=5.0, norm_threshold=0.1)[0]
    sample(apg, prompts="he bows", negative_prompt=" blurry ", story=story, batch_size=3, tau=0.7)
    assert seen["prompt"] == ["he bows"] and seen["video"] is None and seen["negative_prompt"] == "blurry"
    assert seen["context_latents"] is story.context_latents and seen["num_videos_per_prompt"] == 3
    assert (seen["guidance"], seen["guidance_scale"], seen["apg_norm_threshold"], seen["tau"]) == ("apg", 5.0, 0.1, 0.7)


def test_progress_ticks_through_all_clips_shows_each_finished_clip_and_cancels(model, story, progress_hook,
                                                                                monkeypatch):
    """The node's callbacks, called as the pipeline documents (``step_index`` counting through all clips, a clip-end
    call with the clip's frames): one tick per step out of steps x clips, each finished clip's last frame as the
    preview, and Cancel raising ComfyUI's interrupt within a step."""
    seen = recorded(monkeypatch)
    monkeypatch.setattr(model.pipeline, "preview_image", lambda latents: torch.zeros(1, 3, 8, 8))
    sample(model, story=story)
    step, clip_end = seen["callback_on_step_end"], seen["callback_on_clip_end"]
    latents = torch.zeros(1, 64, 20, 12, 21)
    for k in range(2):
        for i in range(11):
            assert step(model.pipeline, 11 * k + i, i, {"latents": latents}) == {}
        clip_end(model.pipeline, k, {"frames": torch.full((1, 80, 3, 8, 8), 0.25 * (k + 1)), "latents": latents})
    assert [value for value, _, _ in progress_hook] == [*range(1, 12), 11, *range(12, 23), 22]
    assert {total for _, total, _ in progress_hook} == {22}
    for k, at in enumerate((11, 23)):
        fmt, image, _ = progress_hook[at][2]
        pixels = np.asarray(image)
        assert fmt == "JPEG" and pixels.shape == (8, 8, 3) and (pixels == int(63.75 * (k + 1))).all()
    host.interrupt_current_processing(True)
    with pytest.raises(host.InterruptProcessingException):
        step(model.pipeline, 0, 0, {"latents": latents})


def test_one_real_clip_gives_its_frames_video_progress_and_story(model, story, progress_hook, monkeypatch):
    """The real pipeline under the node, one clip continuing the fixture's story: 80 frames as IMAGE and VIDEO at
    16 fps, a tick per step and the clip's last frame at its end, and the story to continue."""
    pipe = model.pipeline

    def cheap_decode(context, latents):  # (B, 3, 80, H, W) in [-1, 1] from the clip's latents
        return latents[:, :3].repeat_interleave(4, dim=2).repeat_interleave(16, 3).repeat_interleave(16, 4).tanh()

    monkeypatch.setattr(pipe, "decode_clip", cheap_decode)
    monkeypatch.setattr(pipe, "preview_image", lambda latents: torch.zeros(1, 3, 8, 8))
    frames, clip, out_story = sample(model, prompts="a cat walks in", seed=3, story=story)
    assert frames.shape == (80, 192, 336, 3) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    parts = clip.get_components()
    assert parts.frame_rate == 16 and torch.equal(parts.images, frames)
    assert [(value, total) for value, total, _ in progress_hook] == [*((v, 11) for v in range(1, 12)), (11, 11)]
    expected = (frames[79] * 255).to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(progress_hook[-1][2][1]), expected)
    assert out_story.source == SOURCE and out_story.context_latents.shape == (1, 64, 22, 12, 21)
    assert torch.equal(out_story.context_latents[:, :, :1], story.context_latents[:, :, :1])  # the reference frame
    assert not torch.equal(out_story.context_latents, story.context_latents)


def _bad_video(ctx):
    return dict(video=SimpleNamespace(get_components=lambda: SimpleNamespace(images=torch.zeros(24, 40, 3),
                                                                             frame_rate=Fraction(24))))


@pytest.mark.parametrize(("inputs", "message"), [
    (lambda ctx: dict(prompts=" \n\n  ", story=ctx), "`prompts` is empty; write one prompt per line"),
    (lambda ctx: {}, "connect `video` (the reference the story continues, e.g. Load Video; at least 5 s) or `story` "
                     "(from another VPG Interact Sampler)"),
    (lambda ctx: dict(story=ctx, video=as_video(uint8_frames(120), 24)), "connect either `video` or `story`, not both"),
    (lambda ctx: dict(video=as_video(uint8_frames(79), 16)),
     "`video` is 4.94 s long (79 frames at 16 fps); the reference needs at least 5 s"),
    (lambda ctx: dict(video=as_video(uint8_frames(120), 30)), "`video` is 4.00 s long (120 frames at 30 fps)"),
    (lambda ctx: dict(video=torch.zeros(120, 24, 40, 3)), "`video` must be a VIDEO (e.g. from Load Video), got Tensor"),
    (_bad_video, "`video` must hold frames (F, H, W, 1/3/4 channels), got (24, 40, 3)"),
    (lambda ctx: dict(story="a story"), "`story` must come from a VPG Interact Sampler, got str"),
    (lambda ctx: dict(story=Story(ctx.context_latents, "other.json")),
     "the `story` was made with other.json but the model is tiny interact"),
    (lambda ctx: dict(story=Story(ctx.context_latents.expand(2, -1, -1, -1, -1), SOURCE), batch_size=3),
     "the `story` holds 2 stories but `batch_size` is 3; set `batch_size` to 2"),
    (lambda ctx: dict(story=ctx, tau=float("nan")), "`tau` must be a number in [0.01, 5], got nan"),
])
def test_refusals_name_the_input(model, story, inputs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(TITLE)}: {re.escape(message)}") as info:
        sample(model, **inputs(story))
    assert type(info.value) is ValueError and "\n" not in str(info.value)


def test_models_other_than_interact_and_chains_it_cannot_run_are_refused(model, story):
    pipe = model.pipeline
    as720 = VPGInfinityStarPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, variant="720p",
                                    official_args={"detail_scale_min_tokens": 350})  # the narrow VAE's
    with pytest.raises(ValueError, match=r"^VPG Interact Sampler: `model` tiny 720p is not InfinityStar-Interact "
                                         r"\(kind infinity_star, variant '720p'\); load InfinityStarInteract_24K"):
        sample(VPGModel(as720, kind_of(as720), "tiny 720p"), story=story)
    mute = VPGInfinityStarInteractPipeline(pipe.transformer, pipe.vae, official_args=pipe.config.official_args)
    with pytest.raises(ValueError, match=r"^VPG Interact Sampler: no t5 was loaded without a text encoder; pick the "
                                         r"T5 folder"):
        sample(VPGModel(mute, kind_of(mute), "no t5"), story=story)
    accelerated = run(VPGAccelerate, model=model, preset="fastervar", config="")[0]
    with pytest.raises(ValueError, match=r"^VPG Interact Sampler: VPG Accelerate \(.*\) does not apply to "
                                         r"InfinityStar-Interact; remove it from the chain"):
        sample(accelerated, story=story)
    with pytest.raises(ValueError, match=r"^VPG Prefix Guidance: `scales` asks for scale 11, but this model has 11 "
                                         r"scales \(0-10\)"):
        run(VPGPrefixGuidance, model=model, vpg_scale=1.5, corruption=0.1, mode="full", refresh="persistent",
            scales="2, 11")
    cond = run(VPGTextEncode, model=model, prompt="a cat", negative_prompt="")[0]
    with pytest.raises(ValueError, match=r"^VPG Video Sampler: tiny interact is InfinityStar-Interact .*; use VPG "
                                         r"Interact Sampler\.$"):
        run(VPGVideoSampler, model=model, conditioning=cond, seed=0, num_frames=81, size="default", batch_size=1,
            tau_image=1.0, tau_video=0.4)


def test_the_default_call_of_interact_continues_a_meta_story(model):
    """What the loader plans with and Prefix Guidance counts scales in: one clip from a context at the default
    size, only its shape known (the meta device)."""
    call = default_call(model.pipeline)
    context = call["context_latents"]
    assert context.device.type == "meta" and context.shape == (1, 64, 22, 12, 21)
    assert model.pipeline.resolve_call(**call).num_scales == 11
