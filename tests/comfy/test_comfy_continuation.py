"""VPG Video Sampler's optional ``video`` input: a ComfyUI ``VIDEO`` continued by the 480p model.

Model: the 480p fixture's transformer with one repetition per scale, a narrow random VAE and a tiny T5
(``tests/helpers/star.py``: ``fast_480p_pipe``). The ``VIDEO`` is built by :func:`comfy_nodes.host.video`:
ComfyUI's own ``VideoFromComponents`` when ComfyUI is importable (``COMFYUI_PATH``), else the pack's stand-in
with the same ``get_components()``. Continuation makes 161 frames, so only one test samples.
"""

from __future__ import annotations

import re
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comfy_nodes import api, host, samplers
from comfy_nodes.conditioning import VPGTextEncode
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGVideoSampler
from tests.helpers.comfy import run
from tests.helpers.star import fast_480p_pipe
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.registry import kind_of

TITLE = "VPG Video Sampler"
WIDGETS = dict(seed=0, size="default", batch_size=1, tau_image=1.0, tau_video=0.4)


@pytest.fixture(scope="module")
def model480() -> VPGModel:
    pipe = fast_480p_pipe()
    return VPGModel(pipe, kind_of(pipe), "tiny 480p")


@pytest.fixture(scope="module")
def cond480(model480):
    return run(VPGTextEncode, model=model480, prompt="a cat", negative_prompt="")[0]


def uint8_frames(count: int, height: int = 24, width: int = 40) -> np.ndarray:
    """``count`` random RGB frames (F, H, W, 3) uint8, as a decoded file gives them."""
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def as_video(frames: np.ndarray, fps: float):
    """A ComfyUI ``VIDEO`` of uint8 frames: float images in [0, 1] (F, H, W, 3), as Load Video gives them."""
    return host.video(torch.from_numpy(frames).float() / 255, fps)


def sample(model, cond, video, num_frames=161, **widgets):
    return run(VPGVideoSampler, model=model, conditioning=cond, num_frames=num_frames,
               **{**WIDGETS, **widgets}, video=video)


def test_video_reaches_the_pipeline_as_frames_and_its_frame_rate(model480, cond480, monkeypatch):
    """The node passes the VIDEO's frames and fps as ``video=`` / ``video_fps=``: the pipeline picks the same
    conditioning frames as from the decoded uint8 frames at that rate (its own file / array path)."""
    frames = uint8_frames(120)  # 5 s at 24 fps
    seen = {}

    def record(node_title, pipe, call, prepare=None):  # stands in for sampling: only the arguments matter here
        seen.update(call)
        return SimpleNamespace(frames=torch.zeros(1, 161, 3, 4, 4))

    monkeypatch.setattr(samplers, "run_pipeline", record)
    out_frames, clip = sample(model480, cond480, as_video(frames, 24))
    assert out_frames.shape == (161, 4, 4, 3) and clip.get_components().frame_rate == 16
    assert seen["video_fps"] == 24.0 and seen["num_frames"] == 161 and seen["image"] is None
    assert seen["video"].shape == (120, 3, 24, 40)
    call = {k: v for k, v in seen.items() if k != "callback_on_step_end"}
    pipe = model480.pipeline
    ours = pipe.resolve_call(**call).condition_video
    reference = pipe.resolve_call(prompt="a cat", video=frames, video_fps=24).condition_video
    assert ours.shape == (1, 81, 192, 336, 3) and torch.equal(ours, reference)
    # the rate matters: the same frames at 16 fps are 7.5 s, of which the first 5 s are picked
    sample(model480, cond480, as_video(frames, 16))
    assert seen["video_fps"] == 16.0
    assert not torch.equal(pipe.resolve_call(**{**call, "video_fps": 16}).condition_video, ours)


@pytest.mark.parametrize(("widgets", "video", "message"), [
    (dict(num_frames=81), (120, 24),
     "`num_frames` must be 161 (10 s) with `video`: continuation only makes 10 s videos, got 81"),
    ({}, (79, 16), "`video` is 4.94 s long (79 frames at 16 fps); continuation needs at least 5 s"),
    ({}, (120, 30), "`video` is 4.00 s long (120 frames at 30 fps)"),
    ({}, (120, 0), "`video` must have a positive frame rate, got Fraction(0, 1)"),
    (dict(start_image=torch.zeros(1, 24, 40, 3)), (120, 24), "`start_image` and `video`"),
])
def test_continuation_refusals_speak_the_nodes_words(model480, cond480, widgets, video, message):
    count, fps = video
    with pytest.raises(ValueError, match=f"^{re.escape(TITLE)}: .*{re.escape(message)}") as info:
        sample(model480, cond480, as_video(uint8_frames(count), fps), **widgets)
    assert type(info.value) is ValueError and "\n" not in str(info.value)


def test_a_720p_model_and_a_non_video_are_refused(model480, cond480):
    pipe = model480.pipeline
    as720 = VPGInfinityStarPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, variant="720p",
                                    official_args={"detail_scale_min_tokens": 100})  # the narrow VAE's
    model720 = VPGModel(as720, kind_of(as720), "tiny 720p")
    cond720 = run(VPGTextEncode, model=model720, prompt="a cat", negative_prompt="")[0]
    with pytest.raises(ValueError, match=r"^VPG Video Sampler: `video` \(continuation\) makes 10 s videos \(161 "
                                         r"frames\), which this model does not make .*variant '480p'"):
        sample(model720, cond720, as_video(uint8_frames(120), 24))
    with pytest.raises(ValueError, match=r"^VPG Video Sampler: `video` must be a VIDEO \(e\.g\. from Load Video\), "
                                         r"got Tensor"):
        sample(model480, cond480, torch.zeros(120, 24, 40, 3))
    bad = SimpleNamespace(get_components=lambda: SimpleNamespace(images=torch.zeros(24, 40, 3), frame_rate=24))
    with pytest.raises(ValueError, match=r"^VPG Video Sampler: `video` must hold frames \(F, H, W, 1/3/4 channels\), "
                                         r"got \(24, 40, 3\)"):
        sample(model480, cond480, bad)


def test_continuation_keeps_10_s_of_frames_at_the_models_rate(model480, cond480):
    """One real run: 161 frames at the fixture's size, and the VIDEO output holds them at 16 fps."""
    frames, clip = sample(model480, cond480, as_video(uint8_frames(120), 24))
    assert frames.shape == (161, 192, 336, 3) and bool(torch.isfinite(frames).all())
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    parts = clip.get_components()
    assert parts.frame_rate == 16 and torch.equal(parts.images, frames)


@pytest.mark.skipif(not api.COMFYUI, reason="ComfyUI is not importable (set COMFYUI_PATH): its VIDEO types untested")
def test_comfyuis_own_video_types_are_continued(model480, cond480, monkeypatch):
    """A VIDEO made by ComfyUI's own classes (what Load Video / Create Video give) and the input's declared type."""
    from comfy_api.latest import InputImpl, Types

    info = VPGVideoSampler.GET_NODE_INFO_V1()
    assert info["input"]["optional"]["video"][0] == "VIDEO"
    frames = uint8_frames(120)
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=torch.from_numpy(frames).float() / 255,
                                                                audio=None, frame_rate=Fraction(24)))
    seen = {}
    monkeypatch.setattr(samplers, "run_pipeline", lambda node_title, pipe, call, prepare=None: seen.update(call)
                        or SimpleNamespace(frames=torch.zeros(1, 161, 3, 4, 4)))
    sample(model480, cond480, video)
    assert seen["video_fps"] == 24.0 and torch.equal(seen["video"], torch.from_numpy(frames).float().div(255)
                                                     .permute(0, 3, 1, 2))
