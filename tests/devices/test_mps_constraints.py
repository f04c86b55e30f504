"""Every pipeline path under the constraints of Apple's ``mps`` (and Intel's ``xpu``), on the CPU.

``tests/helpers/device_constraints.py`` makes the CPU take the code paths such a device takes and fails on the
first float64 or float8 tensor op outside ``vpg_pipelines.devices.host_compute`` (the explicit host helper).
Covered: the pipelines (VAR, Infinity, InfinityStar text-to-video, image, image-to-video and 480p video
continuation, forward chunking and tiled decoding, InfinityStar-Interact from a context or a reference), every
guidance term (CFG, APG, VPG in its four modes and two refresh rules, IGG, SSG, entropy temperature), the
accelerators (FastVAR, ScaleKV, FasterVAR) with VPG, the ComfyUI node classes' sampling paths (stand-in schema
API), ``vpg generate`` and ``vpg eval sample``.
A float64 slipping into the sampler fails here, on a Linux CPU machine.
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from comfy_nodes.conditioning import VPGClassConditioning, VPGTextEncode
from comfy_nodes.guidance import (
    VPGAPG,
    VPGCFG,
    VPGIGG,
    VPGSSG,
    VPGEntropyTemperature,
    VPGGuidanceMap,
    VPGPrefixGuidance,
)
from comfy_nodes.model import VPGModel
from comfy_nodes.samplers import VPGSampler, VPGTextImageSampler, VPGVideoSampler
from comfy_nodes.sources import DEMO_CHOICE
from tests.helpers.comfy import load, run
from tests.helpers.device_constraints import DeviceConstraintError, device_constraints
from tests.helpers.evaluation import DEMO_FLAGS, run_here
from tests.helpers.infinity import fixture_embeds, make_pipe
from tests.helpers.interact import context_latents as interact_context
from tests.helpers.star import SIZE, fast_480p_pipe
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.acceleration import INFINITY_2B_10, FasterVAR, FastVAR, ScaleKV
from vpg_pipelines.cli import main
from vpg_pipelines.devices import compute_in_float64, constraints, host_compute
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.ssg import discrete_spatial_enhancement
from vpg_pipelines.registry import kind_of


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- the mode itself ------------------------------------------------------------------------------------------
def test_float32_code_and_python_numbers_pass():
    x = torch.randn(4, 4)
    with device_constraints("mps") as mode:
        y = (x * 0.5 + 1).softmax(-1).sum() / 3
        torch.arange(5)  # int64 is no float64
    assert mode.ops > 0 and mode.host_ops == 0 and y.dtype == torch.float32


@pytest.mark.parametrize("op", [lambda x: x.double(), lambda x: torch.zeros(2, dtype=torch.float64),
                                lambda x: x.to(torch.float8_e4m3fn), lambda x: torch.arange(3, dtype=torch.float64),
                                lambda x: x.to(torch.complex128)],
                         ids=["double", "zeros-float64", "float8", "arange-float64", "complex128"])
def test_float64_and_float8_fail_outside_the_host_helper(op):
    with pytest.raises(DeviceConstraintError, match="would run on the mps device"), device_constraints("mps"):
        op(torch.randn(3))


def test_the_host_helper_is_allowed_and_counted():
    x = torch.randn(3)
    with device_constraints("mps") as mode:
        with host_compute():
            total = x.double().sum()
    assert mode.host_ops > 0 and total.dtype == torch.float64


def test_constraints_follow_the_simulated_platform():
    assert constraints("cpu").float64
    with device_constraints("xpu"):
        assert not constraints("cpu").float64 and constraints("cpu").name == "XPU (Intel)"
        with pytest.raises(DeviceConstraintError, match="xpu"):
            torch.ones(2).to(torch.float8_e4m3fn)
    with device_constraints("cuda") as mode:  # a device with float64: the official float64 runs on it
        torch.ones(2).double()
    assert mode.host_ops == 0
    assert constraints("cpu").float64


@pytest.mark.parametrize("platform", ["mps", "xpu"])
def test_float64_reductions_move_to_the_host_with_the_same_result(platform):
    """APG's projection and SSG's DCT prior: the host path computes exactly what the device path computes."""
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 30, 8, generator=g), torch.randn(2, 30, 8, generator=g)
    previous = torch.randn(1, 8, 1, 3, 5, generator=g)
    apg = AdaptiveProjectedGuidance(7.0)
    on_device = apg.combine(cond, uncond, 7.0), discrete_spatial_enhancement(previous, (2, 6, 9))
    with device_constraints(platform) as mode:
        on_host = apg.combine(cond, uncond, 7.0), discrete_spatial_enhancement(previous, (2, 6, 9))
    assert mode.host_ops > 0
    for a, b in zip(on_device, on_host):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)  # the same float64 arithmetic, same CPU
    parallel, orthogonal = compute_in_float64(lambda a, b: (a * b, a - b), cond, uncond)
    assert parallel.dtype == orthogonal.dtype == torch.float32


# -- the pipelines ---------------------------------------------------------------------------------------------
VAR_SETTINGS = [
    {"guidance_scale": 1.0, "vpg_scale": 1.0},
    {"guidance_scale": 3.0, "vpg_scale": 1.0},
    *({"vpg_scale": 2.0, "vpg_mode": m, "vpg_refresh": r} for m in ("full", "token", "position", "codebook")
      for r in ("persistent", "resample")),
    {"vpg_scale": 2.0, "vpg_scales": [1, 2]},
    {"igg_scale": 1.0},
    {"ssg_scale": 0.5},
    {"entropy_temperature": True},
    {"vpg_scale": 2.0, "igg_scale": 1.0, "ssg_scale": 0.5, "entropy_temperature": True, "top_k": 0, "top_p": 0.9},
]


@pytest.mark.parametrize("settings", VAR_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_var_paths(var_pipe, settings):
    with device_constraints("mps") as mode:
        images = var_pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt", **settings).images
    assert mode.ops > 0 and torch.isfinite(images).all()
    if "ssg_scale" in settings:
        assert mode.host_ops > 0  # SSG's DCT prior went to the host


@pytest.mark.parametrize("folder", ["plain", "patchify"])
def test_infinity_paths(folder):
    pipe = make_pipe(folder, text=folder == "plain")
    if folder == "plain":
        kw = dict(prompt=["a red cat", "dog"])
    else:
        embeds, mask = fixture_embeds(folder)
        kw = dict(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1])
    seeds = range(len(kw.get("prompt", [None])))
    settings = [{"vpg_scale": 2.0, "vpg_mode": "token", "ssg_scale": 0.5, "igg_scale": 1.0}]
    if folder == "plain":
        settings.append({"entropy_temperature": True, "vpg_scale": 2.0, "vpg_refresh": "resample", "top_k": 0})
    with device_constraints("mps") as mode:
        for extra in settings:
            out = pipe(**kw, guidance_scale=3.0, generator=gens(*seeds), output_type="pt", **extra).images
            assert torch.isfinite(out).all()
    assert mode.host_ops > 0


@pytest.mark.parametrize("accelerator", [FastVAR(blocks=(0, 2)), ScaleKV(budget=INFINITY_2B_10.first_blocks(2))],
                         ids=["fastvar", "scalekv"])
def test_infinity_accelerated_paths(accelerator):
    """Token pruning (selection, area fill) and a K/V budget (window scoring, entry gathering) with semantic VPG
    joining and leaving, at 1024 x 1024 where both act on the tiny 2-block model."""
    pipe = make_pipe("plain")
    embeds, mask = fixture_embeds("plain")
    with device_constraints("mps") as mode:
        out = pipe(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1], guidance_scale=3.0, height=1024,
                   width=1024, vpg_scale=1.5, vpg_scales="semantic", acceleration=accelerator, generator=gens(0),
                   output_type="latent").images
    assert mode.ops > 0 and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def star(fast_pipe):
    return fast_pipe


@pytest.mark.parametrize("settings", [
    {"num_frames": 17, "output_type": "latent"},
    {"num_frames": 17, "output_type": "latent", "vpg_scale": 2.0, "vpg_scales": "all", "vpg_mode": "position",
     "ssg_scale": 0.5, "igg_scale": 1.0, "entropy_temperature": True},
    {"num_frames": 1, "output_type": "pt", "image": "start", "guidance": "cfg", "guidance_scale": 3.0,
     "vpg_scale": 2.0},
], ids=["t2v-apg", "t2v-vpg-ssg-igg-temperature", "i2i-cfg-vpg-decoded"])
def test_infinity_star_paths(star, settings):
    """Decoding a 17-frame clip (and image-to-video) runs in test_comfy_video_sampler_with_apg_and_a_start_image."""
    settings = dict(settings)
    if settings.get("image") == "start":
        settings["image"] = PIL.Image.new("RGB", (40, 30), (200, 30, 90))
    with device_constraints("mps") as mode:
        frames = star(prompt="a red fox", **SIZE, generator=gens(0), **settings).frames
    assert torch.isfinite(frames).all()
    if settings.get("guidance", "apg") == "apg":
        assert mode.host_ops > 0  # APG's projection went to the host



def test_infinity_star_with_forward_chunking_and_tiled_decoding(star):
    """The activation savers' paths: the chunked forward (several chunks per large step) and a 17-frame clip
    decoded in 128-pixel tiles every 96 (two rows and four columns of tiles at 192 x 336)."""
    star.transformer.enable_forward_chunking(64)
    star.vae.enable_tiling(128, 128, 96, 96)
    try:
        with device_constraints("mps"):
            frames = star(prompt="a red fox", **SIZE, num_frames=17, output_type="pt", generator=gens(0)).frames
    finally:
        star.transformer.disable_forward_chunking()
        star.vae.disable_tiling()
    assert frames.shape[1:] == (17, 3, SIZE["height"], SIZE["width"]) and torch.isfinite(frames).all()


def test_fastervar_paths(star):
    """FasterVAR (CFG off on the last scales, the last run scale low-rank: its draws, sketch and area restoration)
    with VPG on Infinity and InfinityStar; the tiny Infinity schedule ends before the released low-rank scale, so
    the last scale is named."""
    pipe = make_pipe("plain", text=True)
    infinity_draws, star_draws = {}, {}
    with device_constraints("mps") as mode:
        images = pipe(prompt=["a red cat", "dog"], guidance_scale=3.0, vpg_scale=2.0, vpg_mode="token",
                      acceleration=FasterVAR(last_scale=-1, draw_log=infinity_draws), generator=gens(0, 1),
                      output_type="pt").images
        frames = star(prompt="a red fox", **SIZE, num_frames=17, output_type="latent", vpg_scale=2.0,
                      acceleration=FasterVAR(draw_log=star_draws), generator=gens(0)).frames
    assert torch.isfinite(images).all() and torch.isfinite(frames).all() and mode.ops > 0
    assert infinity_draws and star_draws  # the low-rank scale ran on both


@torch.no_grad()
def test_infinity_star_continuation_path():
    """``video=`` (480p continuation): reading and cropping the frames, the posterior-sampled encode, the
    quantization of the 81 condition frames, the forced clips kept clean by VPG, the generated clip."""
    pipe = fast_480p_pipe()
    video = [PIL.Image.new("RGB", (40, 24), (10 * i % 256, 90, 200)) for i in range(80)]  # 5 s at 16 fps
    with device_constraints("mps") as mode:
        latents = pipe(prompt="a red fox", video=video, sample_posterior=True, vpg_scale=2.0,
                       generator=gens(0), output_type="latent").frames
    assert latents.shape[2] == 41 and torch.isfinite(latents).all()
    assert mode.host_ops > 0  # APG's projection went to the host


@pytest.mark.parametrize("settings", [
    {"context": True, "vpg_scale": 2.0},
    {"reference": True, "guidance": "apg", "vpg_scale": 2.0, "vpg_mode": "token", "sample_posterior": True},
], ids=["interact-context-cfg-vpg", "interact-reference-encode-apg"])
def test_infinity_star_interact_paths(fast_interact_pipe, interact_fixture, settings):
    """Two clips of InfinityStar-Interact (latents: the clip decode is the InfinityStar VAE's, run above), from a
    previous story's context or from the reference video encoded."""
    _, cases, _ = interact_fixture
    settings = dict(settings)
    if settings.pop("context", False):
        settings["context_latents"] = interact_context(cases)
    if settings.pop("reference", False):
        settings["video"] = cases["reference.video_rgb"].numpy()
    with device_constraints("mps") as mode:
        out = fast_interact_pipe(["a red fox", "the fox jumps"], generator=gens(0), output_type="latent", **settings)
    assert out.frames.shape[2] == 40 and torch.isfinite(out.frames).all()
    if settings.get("guidance") == "apg":
        assert mode.host_ops > 0  # APG's projection went to the host

# -- the ComfyUI node classes ----------------------------------------------------------------------------------
def test_comfy_class_sampler_with_every_guidance_node():
    pipe, kind = load(DEMO_CHOICE, "none", lambda name: name)
    model = VPGModel(pipe, kind, DEMO_CHOICE)
    with device_constraints("mps") as mode:
        model = run(VPGCFG, model=model, cfg=3.0)[0]
        model = run(VPGPrefixGuidance, model=model, vpg_scale=2.0, corruption=0.5, mode="codebook",
                    refresh="resample", scales="all")[0]
        model = run(VPGIGG, model=model, igg_scale=1.0, schedule="linear", start=0.0, stop=1.0)[0]
        model = run(VPGSSG, model=model, ssg_scale=0.5, interpolation="nearest", start=0.0, stop=1.0)[0]
        model = run(VPGEntropyTemperature, model=model, t0=1.0, alpha=5.0, theta=0.1, base=1.0, start=0.0,
                    stop=1.0)[0]
        cond = run(VPGClassConditioning, model=model, classes="plant, flag")[0]
        images, guidance = run(VPGSampler, model=model, conditioning=cond, seed=0, batch_size=2, top_k=0, top_p=0.95)
        (picture,) = run(VPGGuidanceMap, guidance=guidance, normalize="per scale", cell=16)
    assert images.shape[0] == 4 and picture.ndim == 4 and mode.host_ops > 0  # 2 classes x batch 2


def test_comfy_text_image_sampler():
    pipe = make_pipe("plain", text=True)
    model = VPGModel(pipe, kind_of(pipe), "tiny-infinity")
    with device_constraints("mps"):
        cond = run(VPGTextEncode, model=model, prompt="a red cat", negative_prompt="")[0]
        guided = run(VPGPrefixGuidance, model=run(VPGCFG, model=model, cfg=3.0)[0], vpg_scale=2.0, corruption=0.5,
                     mode="full", refresh="persistent", scales="all")[0]
        images, _ = run(VPGTextImageSampler, model=guided, conditioning=cond, seed=0, size="default", batch_size=1,
                        tau=0.5, cfg_insertion_layer=0, top_k=900, top_p=0.97)
    assert torch.isfinite(images).all()


def test_comfy_video_sampler_with_apg_and_a_start_image(star):
    pipe = VPGInfinityStarPipeline(star.transformer, star.vae, star.text_encoder, star.tokenizer,
                                   official_args=star.config.official_args)
    pipe.set_progress_bar_config(disable=True)
    model = VPGModel(pipe, kind_of(pipe), "tiny-infinitystar")
    start = torch.rand(1, 30, 50, 3, generator=torch.Generator().manual_seed(0))
    with device_constraints("mps") as mode:
        cond = run(VPGTextEncode, model=model, prompt="a red fox", negative_prompt="")[0]
        apg = run(VPGAPG, model=model, cfg=34.0, norm_threshold=0.05)[0]
        frames, _ = run(VPGVideoSampler, model=apg, conditioning=cond, seed=0, num_frames=17, size="default",
                        batch_size=1, tau_image=1.0, tau_video=0.4, start_image=start)
    assert frames.shape[0] == 17 and mode.host_ops > 0  # image-to-video, decoded


# -- the command lines -----------------------------------------------------------------------------------------
def test_vpg_generate_and_eval_sampling(tmp_path):
    with device_constraints("mps") as mode:
        assert main(["generate", "--model", "demo", "--prompt", "plant", "--prompt", "flag", "--compare",
                     "--ssg-scale", "0.5", "--out", str(tmp_path / "grid.png")]) == 0
        assert run_here("sample", "imagenet", *DEMO_FLAGS, "--classes", "0-1", "--per-class", "2",
                        "--vpg-scale", "1.5", "--out", str(tmp_path / "eval")) == 0
    assert mode.ops > 0
    assert len(list((tmp_path / "eval" / "images").rglob("*.png"))) == 4


def test_eval_metrics_compute_float64_on_the_host_only():
    from vpg_pipelines.evaluation.frechet import frechet_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g) + 0.5
    with device_constraints("mps") as mode:
        distance = frechet_distance(a, b)
    assert distance > 0 and mode.host_ops > 0


def test_a_saver_the_simulated_device_lacks_is_refused(tmp_path, capsys):
    with device_constraints("mps"):
        assert main(["generate", "--model", "demo", "--prompt", "plant", "--quantization", "fp8",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "--quantization 'fp8' is not available on 'cpu' (MPS (Apple Silicon))" in capsys.readouterr().err
