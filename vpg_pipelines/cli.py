"""The ``vpg`` command line: ``vpg generate | demo | convert | memory | eval``."""

from __future__ import annotations

import argparse
import codecs
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import PIL.Image
import torch

from .acceleration import PRESETS, AccelerationError, presets_for, resolve_acceleration
from .demo import run_demo
from .devices import default_dtype, device_memory, pick_device
from .evaluation.cli import add_eval_parser, run_eval
from .flags import DTYPES, read_json_object, vpg_scales
from .guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from .loading.auto import (
    SourceError,
    empty_pipeline_from_folder,
    is_saved_folder,
    load_pipeline,
    released_pipeline,
    saved_class,
    saved_quantization,
    source_kind,
)
from .memory.choose import choose_savers, fit_to_memory
from .memory.offload import apply_offload
from .memory.quantization import apply_quantization, check_quantization
from .memory.report import gib
from .models.infinity_star.interact import REFERENCE_PIXEL_FRAMES, REFERENCE_SECONDS
from .paths import looks_like_local_path
from .pipelines.pipeline_vpg_infinity_star_interact import CONTEXT_FRAMES, VPGInfinityStarInteractPipeline
from .pipelines.reference_video import reference_frames
from .registry import KINDS, ModelKind, released_model, released_names
from .utils import export_to_video
from .visual import comparison_grid, comparison_video

VIDEO_SUFFIXES = (".mp4",)
FLAGS = {"source": "--model", "companion": "--vae", "config": "--config", "text_encoder": "--text-encoder",
         "variant": "--variant"}
"""The loader's argument names (:class:`~.loading.auto.SourceError`) as flags."""


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (image i uses seed + i)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="CFG strength (VAR: the official cfg; InfinityStar: the APG scale, 34)")
    p.add_argument("--top-k", type=int, default=None, help="VAR and Infinity only")
    p.add_argument("--top-p", type=float, default=None, help="VAR and Infinity only")
    p.add_argument("--vpg-scale", type=float, default=None, help="VPG weight w (1 = off); default: per model")
    p.add_argument("--vpg-corruption", type=float, default=None,
                   help="fraction p of corrupted sites per scale (default: 0.5 images, 0.1 InfinityStar)")
    p.add_argument("--vpg-mode", default=None, choices=["full", "token", "position", "codebook"],
                   help="default: full")
    p.add_argument("--vpg-refresh", default=None, choices=["persistent", "resample"], help="default: persistent")
    p.add_argument("--vpg-scales", type=vpg_scales, default=None,
                   help="'all', 'semantic' or e.g. '1,2,3' (default: all; InfinityStar: semantic)")
    p.add_argument("--igg-scale", type=float, default=None,
                   help="Information-Grounding Guidance w (>= 0; default off; 0 is not off): docs/guidance.md")
    p.add_argument("--ssg-scale", type=float, default=None, help="Scaled Spatial Guidance beta (>= 0; default 0 = off)")
    p.add_argument("--entropy-temperature", action="store_true",
                   help="per-site temperature T0*exp(-H/alpha)+theta from the entropy H, after all guidance")
    p.add_argument("--acceleration", type=_acceleration_flag, default=None,
                   help="a training-free accelerator (docs/acceleration.md): a preset name ("
                        + ", ".join(f"{n}: {d}" for n, (_, d) in PRESETS.items()).replace("%", "%%")
                        + "), a JSON file or an inline JSON object such as "
                          "'{\"method\": \"fastvar\", \"blocks\": [0, 2]}' (default: none)")
    paper = ENTROPY_TEMPERATURE_DEFAULTS
    p.add_argument("--entropy-temperature-t0", type=float, default=None, help=f"T0 (default {paper.t0:g})")
    p.add_argument("--entropy-temperature-alpha", type=float, default=None, help=f"alpha (default {paper.alpha:g})")
    p.add_argument("--entropy-temperature-theta", type=float, default=None, help=f"theta (default {paper.theta:g})")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, xpu, mps (default: the first available of cuda (NVIDIA or ROCm), xpu, "
                        "mps, cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default on a GPU: fp16 (VAR, Infinity) or bf16 (InfinityStar; fp32 on macOS before 14); "
                        "fp32 on CPU")
    p.add_argument("--compare", action="store_true",
                   help="the same seeds without | with VPG: a labelled grid (PNG) or side-by-side video (MP4)")


def _add_memory_args(p: argparse.ArgumentParser, planning: bool = False) -> None:
    p.add_argument("--quantization", choices=["none", "int8", "nf4", "fp8"], default=None,
                   help="transformer weights: int8 (TorchAO), nf4 (bitsandbytes: CUDA, ROCm, XPU), fp8 (layerwise "
                        "casting; not on mps or xpu); "
                        "see docs/memory.md" + ("" if planning else " (default: as loaded)"))
    p.add_argument("--kv-cache-offload", action="store_true",
                   help="keep the sampler's K/V cache in host memory, each layer's entries copied to the GPU as it "
                        "attends (outputs unchanged; for long videos whose cache outgrows the card; docs/memory.md)")
    if not planning:
        p.add_argument("--offload", choices=["none", "model", "group", "sequential", "auto"], default="none",
                       help="offload mode (docs/memory.md); auto: the least costly one the planner fits in the "
                            "free GPU memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpg", description="Visual Prefix Guidance for next-scale models")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="images (VAR, Infinity) or videos (InfinityStar) with VPG")
    gen.add_argument("--model", required=True,
                     help="'demo' (bundled), a saved pipeline folder (VAR, Infinity or InfinityStar), or an "
                          "official var_d*.pth (with --vae)")
    gen.add_argument("--vae", default=None, help="official VQVAE file (vae_ch160v4096z32.pth) with a .pth --model")
    gen.add_argument("--config", default=None, help="JSON with the official constructor args {'vqvae':…,'var':…}")
    gen.add_argument("--prompt", action="append", required=True,
                     help="class name or id (Infinity, InfinityStar: text); repeat for several (InfinityStar-Interact: "
                          "one per 5 s clip, in order)")
    gen.add_argument("--negative-prompt", default=None,
                     help="Infinity, InfinityStar: replaces the learned null text")
    gen.add_argument("--height", type=int, default=None,
                     help="Infinity: output height (snapped to a template); InfinityStar: a schedule's height")
    gen.add_argument("--width", type=int, default=None, help="like --height")
    gen.add_argument("--num-frames", type=int, default=None,
                     help="InfinityStar only: 480p 81 or 161 (5 / 10 s), 720p 1 or 1 + 16k up to 81 (default: 1 for an "
                          "image --out, else 81; with --video 161); not for InfinityStar-Interact (a 5 s clip per "
                          "--prompt)")
    gen.add_argument("--video", default=None,
                     help="InfinityStar 480p: continue this video (at least 5 s; its first 5 s are kept) to a 10 s "
                          ".mp4 --out. InfinityStar-Interact: the reference video (at least 5 s; its last 5 s are "
                          "encoded) the story continues, one 5 s clip per --prompt")
    gen.add_argument("--variant", choices=list(KINDS["infinity_star"].variants), default=None,
                     help="InfinityStar official checkpoint: the script to run it like (default: from its name)")
    gen.add_argument("--num-images", type=int, default=1,
                     help="images (InfinityStar: videos; InfinityStar-Interact: stories) per prompt")
    gen.add_argument("--out", default="out.png",
                     help="output image (.png, .jpg; several images: a grid) or, InfinityStar, video (.mp4)")
    _add_sampling_args(gen)
    _add_memory_args(gen)

    mem = sub.add_parser("memory", help="plan the GPU memory of a generate call (per component, per offload mode)")
    mem.add_argument("--model", required=True,
                     help="a released model (" + ", ".join(released_names()) + "), 'demo', a saved pipeline "
                          "folder (read without its weights) or an official var_d*.pth (with --vae)")
    mem.add_argument("--vae", default=None, help="official VQVAE file with a .pth --model")
    mem.add_argument("--config", default=None, help="JSON with the official constructor args (.pth --model)")
    mem.add_argument("--prompt", action="append", default=None,
                     help="class name or id (text models: text); repeat for several (default: one)")
    mem.add_argument("--negative-prompt", default=None)
    mem.add_argument("--height", type=int, default=None)
    mem.add_argument("--width", type=int, default=None)
    mem.add_argument("--num-frames", type=int, default=None, help="InfinityStar: 1 or 1 + 16k (default: the model's)")
    mem.add_argument("--num-images", type=int, default=1, help="images (InfinityStar: videos) per prompt")
    mem.add_argument("--video", default=None,
                     help="InfinityStar-Interact: the reference video (its encoding is planned; without it a story "
                          "continued from its context is planned)")
    mem.add_argument("--text-tokens", type=int, default=None,
                     help="prompt length to plan with when the model has no tokenizer (released models; default 512)")
    mem.add_argument("--free-gib", type=float, default=None,
                     help="free GPU memory in GiB: also print what --offload auto would pick")
    mem.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    _add_sampling_args(mem)
    _add_memory_args(mem, planning=True)

    demo = sub.add_parser("demo", help="the bundled tiny model: a labelled grid without | with VPG (offline)")
    demo.add_argument("--out", default="vpg_demo.png")
    demo.add_argument("--seeds", type=int, default=4, help="number of seeds (rows per class)")
    demo.add_argument("--vpg-scale", type=float, default=None)
    demo.add_argument("--classes", default=None,
                      help="comma-separated class names to draw (default: all 30), e.g. face-happy,plant")

    conv = sub.add_parser("convert", help="official VAR / Infinity / InfinityStar files -> a pipeline folder "
                                          "(safetensors)")
    model = conv.add_mutually_exclusive_group(required=True)
    model.add_argument("--var", help="official var_d*.pth (local path or hub file name)")
    model.add_argument("--infinity", help="official Infinity transformer: infinity_2b_reg.pth or a shard folder "
                                          "(local, or a name in FoundationVision/Infinity)")
    model.add_argument("--infinity-star", help="official InfinityStar transformer: infinitystar_8b_720p_weights "
                                               "(shard folder) or one file (local, or FoundationVision/InfinityStar)")
    conv.add_argument("--vae", required=True, help="the matching official VAE file (vae_ch160v4096z32.pth, "
                                                   "infinity_vae_d32reg.pth, infinitystar_videovae.pth)")
    conv.add_argument("--text-encoder", default=None,
                      help="Infinity, InfinityStar: T5 encoder path or hub id (google/flan-t5-xl), saved into the "
                           "folder; without it the folder takes prompt_embeds only")
    conv.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: --text-encoder's)")
    conv.add_argument("--config", default=None, help="JSON with the official constructor args / settings")
    conv.add_argument("--variant", choices=list(KINDS["infinity_star"].variants), default=None,
                      help="--infinity-star: the official script to run it like (default: from the checkpoint's name)")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    conv.add_argument("--quantization", choices=["none", "int8", "nf4"], default="none",
                      help="store the transformer quantized: int8 (TorchAO) or nf4 (bitsandbytes, CUDA); "
                           "fp8 is applied at load time (vpg generate --quantization fp8)")
    conv.add_argument("--out", required=True, help="output folder (must not exist or be empty)")

    add_eval_parser(sub)
    return parser


def _flag_error(err: SourceError) -> ValueError:
    return ValueError(f"{FLAGS.get(err.argument, err.argument)} {err.detail}")


def _kind(model: str) -> ModelKind:
    """The kind ``--model`` loads as (see :func:`~.loading.auto.source_kind`)."""
    try:
        return source_kind(model)
    except SourceError as err:
        raise _flag_error(err) from None


def _load(model: str, vae: str | None, config: str | None, dtype: torch.dtype | None, variant: str | None = None):
    """``--model`` (+ ``--vae``, ``--config``, ``--variant``) through the one loader; its errors name the flags."""
    try:
        return load_pipeline(model, vae, read_json_object(config, "--config"), dtype, variant=variant)
    except SourceError as err:
        raise _flag_error(err) from None


def _square(image: PIL.Image.Image) -> PIL.Image.Image:
    """Pad to a square (white) so grid cells keep the aspect ratio."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = PIL.Image.new("RGB", (side, side), "white")
    canvas.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _vpg_settings(pipe, args: argparse.Namespace) -> dict:
    """The VPG flags given, the pipeline's own defaults for the rest."""
    defaults = inspect.signature(type(pipe).__call__).parameters
    names = ("vpg_scale", "vpg_corruption", "vpg_mode", "vpg_refresh", "vpg_scales")
    return {n: defaults[n].default if getattr(args, n) is None else getattr(args, n) for n in names}


def _acceleration_flag(text: str) -> str | dict:
    """``--acceleration``: a preset name as is; an inline JSON object or a ``.json`` file as the config mapping
    ``acceleration=`` takes."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("must be a JSON object")
        return value
    if text.endswith(".json"):
        try:
            return read_json_object(text, "--acceleration")
        except (OSError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _check_acceleration(kind: ModelKind, value: str | dict | None) -> None:
    """``--acceleration`` names an accelerator that applies to the model's kind (before any loading)."""
    if value is None or value == "none":
        return
    allowed = presets_for(kind.name)
    if not allowed:
        kinds = sorted({m for build, _ in PRESETS.values() for m in build().models})
        raise ValueError(f"--acceleration: no accelerator applies to {kind.name} models (the presets "
                         f"{list(PRESETS)} apply to {', '.join(kinds)}); leave it out")
    try:
        method = resolve_acceleration(value)
    except ValueError as err:
        message = _flag_words(err)
        message = message if "--acceleration" in message else f"--acceleration: {message}"
        raise ValueError(f"{message} (for {kind.name}: {['none', *allowed]})") from None
    if kind.name not in method.models:
        raise ValueError(f"--acceleration {method.name} applies to {', '.join(method.models)} models, not "
                         f"{kind.name}; use one of {['none', *allowed]}")


def _flag_words(err: ValueError) -> str:
    """An accelerator's message about the ``acceleration`` argument, worded for the flag."""
    return str(err).replace("`acceleration`", "--acceleration")


# -- InfinityStar-Interact: one 5 s clip per --prompt, continuing a reference --video ------------------------------
def _is_interact(kind: ModelKind, model: str, variant: str | None = None) -> bool:
    """Whether ``--model`` loads as InfinityStar-Interact (a released name, a saved folder, or an official file by
    its name or ``--variant``)."""
    if kind.media != "video":
        return False
    if model in kind.released:
        return kind.released[model].variant == "interact"
    if is_saved_folder(model):
        return saved_class(model) is VPGInfinityStarInteractPipeline
    return (variant or kind.variant_for_file(model)) == "interact"


def _check_interact_args(kind: ModelKind, args: argparse.Namespace, out: Path | None) -> bool:
    """Whether ``--model`` is InfinityStar-Interact, its flags checked (one clip per --prompt from a --video, no
    --num-frames; ``out``: ``vpg generate``'s output); for other models ``--video`` is a continuation's input."""
    if not _is_interact(kind, args.model, getattr(args, "variant", None)):
        return False  # --video is a continuation's input then (480p; checked with the other InfinityStar flags)
    if args.num_frames is not None:
        raise ValueError("--num-frames does not apply to InfinityStar-Interact: each --prompt makes one 5 s clip "
                         "(80 frames)")
    if out is not None:
        if out.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"--out {out}: InfinityStar-Interact makes a video; write it to a .mp4")
        if args.video is None:
            raise ValueError("--video is required for InfinityStar-Interact: the reference video (at least 5 s) the "
                             "story continues")
    if args.video is not None and not Path(args.video).is_file():
        raise FileNotFoundError(f"--video {args.video}: no such file")
    return True


def _read_reference(path: str) -> list[PIL.Image.Image]:
    """The 81 frames of ``--video`` the pipeline encodes (its last 5 s, the official choice), read before the model
    loads so that a short or unreadable video fails first. The pipeline takes exactly 81 frames as given, so
    passing them equals passing the file."""
    try:
        return reference_frames(path, REFERENCE_PIXEL_FRAMES, REFERENCE_SECONDS, default_fps=16)
    except ValueError as err:  # the pipeline's words for its `video` argument, as the flag
        detail = re.sub(r"^`video` ('[^']*': )?", "", str(err))
        raise ValueError(f"--video {path}: " + re.sub(r"; or exactly \d+ frames given in memory", "", detail)) from None


def _check_generate_args(kind: ModelKind, args: argparse.Namespace, out: Path) -> None:
    """Flags that do not apply to the model, and output types it cannot write; before any loading."""
    _check_acceleration(kind, args.acceleration)
    suffix = out.suffix.lower()
    if suffix not in VIDEO_SUFFIXES and suffix not in PIL.Image.registered_extensions():
        raise ValueError(f"--out {out}: unknown file type {suffix!r}; use an image (.png, .jpg) or .mp4 (video)")
    if kind.media != "video":
        if suffix in VIDEO_SUFFIXES:
            raise ValueError(f"--out {out}: only InfinityStar pipeline folders make videos; use an image file")
        if args.num_frames is not None:
            raise ValueError("--num-frames applies to InfinityStar pipeline folders only")
    if kind.conditioning == "class" and {args.negative_prompt, args.height, args.width} != {None}:
        raise ValueError("--negative-prompt, --height and --width apply to Infinity and InfinityStar pipeline "
                         "folders only")
    if kind.media != "video" and (args.video is not None or args.variant is not None):
        raise ValueError("--video and --variant apply to InfinityStar only")
    interact = _check_interact_args(kind, args, out)
    if kind.media == "video":
        if args.top_k is not None or args.top_p is not None:
            raise ValueError("--top-k and --top-p do not apply to InfinityStar (its sampler has no such filters)")
        if not interact and suffix not in VIDEO_SUFFIXES and args.num_frames not in (None, 1):
            raise ValueError(f"--out {out} is an image: pass --num-frames 1 (or leave it out), or write a video "
                             f"with --out {out.with_suffix('.mp4').name}")
        if args.video is not None and suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"--video continues a video: write it to a .mp4 --out, not {out.name}")
        if args.video is not None and not Path(args.video).is_file():
            raise FileNotFoundError(f"--video {args.video}: no such file")


def _call_options(kind: ModelKind, args: argparse.Namespace, as_video: bool,
                  interact: bool = False) -> tuple[list, dict]:
    """The prompts and the other call arguments the flags give (``None`` flags left to the pipeline);
    ``interact``: InfinityStar-Interact (the prompts are its clips)."""
    video = kind.media == "video"
    text = kind.conditioning == "text"
    prompts = [p if text or not p.strip().isdigit() else int(p) for p in args.prompt]
    options = {"guidance_scale": args.guidance_scale, "top_k": args.top_k, "top_p": args.top_p,
               "igg_scale": args.igg_scale, "ssg_scale": args.ssg_scale,
               "entropy_temperature": args.entropy_temperature or None,
               "entropy_temperature_t0": args.entropy_temperature_t0,
               "entropy_temperature_alpha": args.entropy_temperature_alpha,
               "entropy_temperature_theta": args.entropy_temperature_theta, "acceleration": args.acceleration}
    if text:
        options |= {"negative_prompt": args.negative_prompt, "height": args.height, "width": args.width}
    if video and interact:  # one clip per prompt from the reference video
        options |= {"video": args.video, "num_videos_per_prompt": args.num_images}
    elif video:
        options |= {"num_frames": args.num_frames if args.num_frames or as_video else 1,
                    "num_videos_per_prompt": args.num_images, "video": getattr(args, "video", None)}
    else:
        options["num_images_per_prompt"] = args.num_images
    return prompts, {k: v for k, v in options.items() if v is not None}


def _place(pipe, args: argparse.Namespace, device: torch.device, call: dict) -> None:
    """``--quantization`` then ``--offload`` (``auto``: planned against the device's free memory; on the CPU
    there is nothing to plan and nothing is offloaded)."""
    check_quantization(args.quantization, device, argument="--quantization")
    if args.kv_cache_offload:
        pipe.enable_kv_cache_offload()
    if args.offload == "auto" and device_memory(device) is not None:
        apply_quantization(pipe, args.quantization)  # a given format is kept; auto may add one otherwise
        fixed = None if args.quantization is None else ("none",)
        choice = fit_to_memory(pipe, device=device, quantizations=fixed, **call)
        verdict = "fits" if choice.fits else "does NOT fit (the smallest plan)"
        extra = "".join(f", {s}" for s in choice.savers())
        print(f"memory: planned peak {gib(choice.peak)} {verdict}: quantization {choice.quantization}, "
              f"offload {choice.offload}{extra}")
        return
    apply_quantization(pipe, args.quantization)
    apply_offload(pipe, "none" if args.offload == "auto" else args.offload, device)


def _generate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    kind = _kind(args.model)
    _check_generate_args(kind, args, out)
    device = pick_device(args.device, "--device")
    check_quantization(args.quantization, device, argument="--quantization")  # before minutes of loading
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(kind.gpu_dtype, device)
    interact = _is_interact(kind, args.model, args.variant)
    reference = _read_reference(args.video) if interact else None
    pipe = _load(args.model, args.vae, args.config, dtype, args.variant)
    video = kind.media == "video"
    prompts, kwargs = _call_options(kind, args, out.suffix.lower() in VIDEO_SUFFIXES, interact)
    if interact:
        kwargs["video"] = reference
    count = args.num_images if interact else len(prompts) * args.num_images  # Interact: prompts are clips
    vpg = _vpg_settings(pipe, args)
    _place(pipe, args, device, {"prompt": prompts, **kwargs, **vpg})

    def run(**extra) -> list:
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(count)]
        result = pipe(prompt=prompts, generator=generators, **kwargs, **extra)
        return result.frames if video else result.images

    out.parent.mkdir(parents=True, exist_ok=True)
    labels = ["story"] if interact else prompts
    names = [f"{p} #{args.seed + i}" for i, p in enumerate(p for p in labels for _ in range(args.num_images))]
    w = vpg["vpg_scale"] if vpg["vpg_scale"] is not None else pipe.prefix_guidance(**vpg).guidance_scale
    columns = [run(**{**vpg, "vpg_scale": 1.0}), run(**vpg)] if args.compare else [run(**vpg)]
    titles = ["without VPG", f"with VPG (w={w:g})"] if args.compare else [f"w={w:g}"]
    if video and out.suffix.lower() in VIDEO_SUFFIXES:
        frames = columns[0][0] if len(columns) == 1 and count == 1 else comparison_video(columns, titles)
        export_to_video(frames, out, fps=pipe.fps)
    else:
        if video:  # one frame per video
            columns = [[frames[0] for frames in column] for column in columns]
        if len(columns) == 1 and count == 1:
            columns[0][0].save(out)
        else:
            cells = [[_square(image) for image in column] for column in columns]
            comparison_grid(cells, titles, names).save(out)
    print(f"wrote {out}")


def _check_new_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a new folder (nothing was overwritten)")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder (nothing was overwritten)")


def _check_source(flag: str, value: str | None) -> None:
    """A local-looking path must exist (anything else may be a hub name, checked when it is fetched)."""
    if value is not None and looks_like_local_path(value) and not Path(value).expanduser().exists():
        raise FileNotFoundError(f"{flag} {value}: no such file or folder")


def _save_atomically(pipe, out: Path) -> None:
    """``save_pretrained`` into a hidden folder beside ``out``, then one rename: ``out`` appears only
    complete, an existing non-empty ``out`` is never touched, and a failure leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        pipe.save_pretrained(str(staging))
        try:
            os.replace(staging, out)  # POSIX: replaces an empty folder, refuses a non-empty one; Windows: refuses both
        except OSError:
            _check_new_folder(out)  # something was written into it meanwhile: refuse
            if out.exists():
                out.rmdir()
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _convert(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _check_new_folder(out)
    text = args.var is None
    if not text and (args.text_encoder or args.tokenizer):
        raise ValueError("--text-encoder and --tokenizer go with --infinity or --infinity-star, not --var")
    if args.tokenizer and not args.text_encoder:
        raise ValueError("--tokenizer needs --text-encoder")
    source = args.var or args.infinity or args.infinity_star
    flag = "--var" if args.var else "--infinity" if args.infinity else "--infinity-star"
    for name, value in ((flag, source), ("--vae", args.vae), ("--text-encoder", args.text_encoder),
                        ("--tokenizer", args.tokenizer)):
        _check_source(name, value)
    cfg = read_json_object(args.config, "--config")
    dtype = DTYPES[args.dtype]
    quantization = None if args.quantization == "none" else args.quantization
    check_quantization(quantization)
    kind = KINDS["var" if args.var else "infinity" if args.infinity else "infinity_star"]
    options = {"config": cfg, "torch_dtype": dtype, "quantization": quantization}
    if args.variant is not None:
        if kind.name != "infinity_star":
            raise ValueError("--variant goes with --infinity-star")
        options["variant"] = args.variant
    if kind.text_encoder:  # text encoder and tokenizer by path or hub id
        options.update(text_encoder=args.text_encoder, tokenizer=args.tokenizer)
    # an Interact checkpoint (by its name) converts to the Interact pipeline, as the loader reads it
    pipe = kind.pipeline_class_for(args.variant or kind.variant_for_file(source)).from_official(source, args.vae,
                                                                                            **options)
    _save_atomically(pipe, out)
    if text and pipe.text_encoder is None:
        print("note: no --text-encoder: the folder generates from prompt_embeds only (not from `vpg generate`)")
    print(f"wrote {out}")


def _memory(args: argparse.Namespace) -> None:
    """``vpg memory``: the planner's report for the call ``vpg generate`` would make with the same flags."""
    quantization = args.quantization
    kind = _kind(args.model)
    _check_acceleration(kind, args.acceleration)
    if args.model in released_names():
        pipe = released_pipeline(args.model)
        dtype = DTYPES[args.dtype] if args.dtype else kind.gpu_dtype
        sizes = next(iter(released_model(args.model)[1].sizes.values()))
        for flag in ("height", "width", "num_frames"):
            if flag in sizes and getattr(args, flag) is None:
                setattr(args, flag, sizes[flag])
    elif is_saved_folder(args.model):
        if args.vae is not None or args.config is not None:
            raise ValueError("--vae and --config go with an official .pth --model, not with a pipeline folder")
        pipe = empty_pipeline_from_folder(args.model)
        quantization = quantization or saved_quantization(args.model)
        dtype = DTYPES[args.dtype] if args.dtype else None
    else:
        dtype = DTYPES[args.dtype] if args.dtype else None
        pipe = _load(args.model, args.vae, args.config, dtype)
    if args.prompt is None:
        args.prompt = ["0" if kind.conditioning == "class" else "a photo"]
    if args.model == "demo" and args.prompt == ["0"]:
        args.prompt = ["plant"]
    interact = _check_interact_args(kind, args, None)
    prompts, kwargs = _call_options(kind, args, as_video=kind.media == "video", interact=interact)
    if interact and args.video is None:  # a story continued from its context: no reference to encode
        height, width = (args.height, args.width) if args.height and args.width else pipe.default_size
        kwargs["context_latents"] = torch.empty(1, pipe.vae.codebook_dim, CONTEXT_FRAMES, height // 16, width // 16,
                                                device="meta")
    call = {"prompt": prompts, **kwargs, **_vpg_settings(pipe, args)}
    if args.kv_cache_offload:
        pipe.enable_kv_cache_offload()
    estimate = pipe.estimate_memory(dtype=dtype, quantization=quantization, text_tokens=args.text_tokens, **call)
    print(estimate)
    if args.free_gib is not None:
        free = int(args.free_gib * 1024**3)
        fixed = None if quantization is None else (quantization,)
        choice = choose_savers(pipe, free, quantizations=fixed, dtype=dtype, text_tokens=args.text_tokens, **call)
        verdict = "fits" if choice.fits else "does NOT fit; the smallest plan"
        extra = "".join(f", {s}" for s in choice.savers())
        print(f"auto for {gib(free)} free: quantization {choice.quantization}, offload {choice.offload}{extra}, "
              f"planned peak {gib(choice.peak)} ({verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(estimate.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")


def _demo(args: argparse.Namespace) -> None:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    path = run_demo(args.out, num_seeds=args.seeds, vpg_scale=args.vpg_scale, classes=classes)
    print(f"wrote {path}")


def _eval(args: argparse.Namespace) -> None:
    run_eval(args)


def console_never_fails(*streams: object) -> None:
    """Let ``streams`` (default: stdout, stderr) print any text: where their encoding is not UTF-8 (a Windows
    console redirected to a file or pipe uses the ANSI code page), characters it lacks print as ``?`` instead
    of raising ``UnicodeEncodeError`` in the middle of a run (``sweep``'s arrows, prompts in any script)."""
    for stream in streams or (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        if isinstance(stream, io.TextIOWrapper) and codecs.lookup(encoding).name != "utf-8" \
                and stream.errors == "strict":
            stream.reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> int:
    console_never_fails()
    args = build_parser().parse_args(argv)
    try:
        commands = {"generate": _generate, "convert": _convert, "demo": _demo, "memory": _memory, "eval": _eval}
        commands[args.command](args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        message = _flag_words(err) if isinstance(err, AccelerationError) else err
        print(f"vpg {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
