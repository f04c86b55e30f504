"""Our InfinityStar sampler against the official one: same architecture, same weights, same draws.

The official code is imported at run time from a local checkout of
https://github.com/FoundationVision/InfinityStar (``--reference-repo``); nothing of it ships with this
package. Its CUDA-only imports (and ``tap``, the base class of its ``Args``) are replaced by the CPU
stand-ins of ``benchmarks/official_stubs.py``; it also needs ``einops`` and ``pytz``.

The official 8B transformer (``infinity_qwen8b``: width 4096, 32 heads, 8 KV heads, flan-T5-XL text
width 2048) is built at ``--depth`` blocks (the 8B has 36) with seeded random weights, and the
official Wan-style video VAE with ``--vae-channels`` (released: 96,192,384,384,384); our transformer
and VAE are loaded from their state dicts with our own loaders. Text features are random (no T5).

Settings (``--settings``):

- ``reduced`` (default): the 720p script's (``tools/infer_video_720p.py``) at the smallest pixel budget
  (0.06M, 192x336), ``--frames`` 1 (the image clip, 11 scales) or 17 (one video clip more, 22 scales),
  with the parity fixtures' repetitions for that budget (image ``[3]*11``, video ``[3]*8+[2,1,1]``, 8
  semantic scales, detail codebook from 100 tokens), plain CFG (``use_cfg``, ``s*c + (1-s)*u``) at
  ``--guidance-scale`` (1.5).
- ``480p``: the released 480p script's (``tools/infer_video_480p.py``) as it ships: 0.40M (480x848),
  81 frames (5 s: 28 scales, 81 steps), APG at 34 with norm threshold 0.05, tau 1 / 0.4, repetitions
  ``[3]*14`` / ``[3]*12+[2,1]``, 11 semantic scales, detail codebook from 350 tokens.

The official sampler draws every bit with ``torch.multinomial`` (no greedy mode); both samplers use
one generator seeded with ``--seed``, drawn in the same order, so equal logits give equal bits. The
script checks the bits of every (scale, repetition) step and reports the largest difference of the
summed codes and of the decoded videos (``--no-agreement`` leaves that check out: at 480p it costs
two more official calls).

    python benchmarks/vs_official_infinity_star.py --reference-repo /path/to/InfinityStar --depth 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import official_stubs
from benchmarks import vs_official_infinity as voi_names
from benchmarks.common import (
    CLOCKS,
    ScaleClock,
    count_params,
    interleaved,
    machine_info,
    markdown_table,
    run_header,
    speed_rows,
    write_outputs,
)
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.loading.infinity_star import build_transformer, build_vae, infer_transformer_config, infer_vae_config
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.schedules import StepPlan
from vpg_pipelines.pipelines.pipeline_vpg_infinity_star import VPGInfinityStarPipeline
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

# The released 8B (manifest ``infinity_star_8b_720p``): infinity_qwen8b, flan-T5-XL features.
WIDTH, TEXT_CHANNELS, TEXT_MAXLEN = 4096, 2048, 512
VAE_CHANNELS = (96, 192, 384, 384, 384)
NEEDED = ("einops", "pytz")
OURS = ("ours", "ours-sampler")
NAMES = {"official": "official `autoregressive_infer` (infinity_elegant)",
         "ours": "ours: `VPGInfinityStarPipeline.__call__`", "ours-sampler": "ours: `run_next_scale` + decode"}
# The 720p script's settings, with the parity fixtures' repetitions for the 0.06M budget (11 scales a clip).
SCRIPT_ARGS = {
    "pn": "0.06M", "video_frames": 81, "dynamic_scale_schedule": "infinity_elegant_clip20frames_v2",
    "use_apg": 0, "use_cfg": 1, "apg_norm_threshold": 0.05, "tau_image": 1.0, "tau_video": 0.4,
    "image_scale_repetition": [3] * 11, "video_scale_repetition": [3] * 8 + [2, 1, 1], "use_two_stage_lfq": 1,
    "detail_scale_min_tokens": 100, "semantic_scales": 8, "max_repeat_times": 10000, "vae_type": 64, "videovae": 10,
}
# tools/infer_video_480p.py:166-193 as released (generation_duration 5: 81 frames).
RELEASED_480P_ARGS = {
    **SCRIPT_ARGS, "pn": "0.40M", "video_frames": 81, "use_apg": 1, "use_cfg": 0,
    "image_scale_repetition": [3] * 14, "video_scale_repetition": [3] * 12 + [2, 1],
    "detail_scale_min_tokens": 350, "semantic_scales": 11,
}
SETTINGS = {"reduced": SCRIPT_ARGS, "480p": RELEASED_480P_ARGS}
FRAMES = {"reduced": (1, 17), "480p": (1, 17, 81)}  # the last: the default
GUIDANCE = {"reduced": ("cfg", 1.5, 20.0), "480p": ("apg", 34.0, 100.0)}  # (term, default scale, largest allowed)
H_DIV_W = 0.571  # the script's target ratio


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-repo", required=True, help="local checkout of the official InfinityStar repository")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (>= 2; the 8B has 36)")
    p.add_argument("--width", type=int, default=WIDTH,
                   help="transformer width (4096 for the 8B; a multiple of 512: 128 per head, 4 heads per KV head)")
    p.add_argument("--settings", default="reduced", choices=tuple(SETTINGS),
                   help="reduced: the 720p script at 0.06M with plain CFG; 480p: the released 480p script as it ships")
    p.add_argument("--frames", type=int, default=None, choices=(1, 17, 81),
                   help="reduced: 1 (the image clip) or 17 (plus one video clip; default); 480p: 81 (5 s, the "
                        "default), or 1 / 17 for quick checks")
    p.add_argument("--vae-channels", default=",".join(map(str, VAE_CHANNELS)),
                   help="VAE block channels (released: 96,192,384,384,384; 32,32,32,32,32 for quick runs)")
    p.add_argument("--text-len", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="reduced: plain CFG strength (default 1.5; low: see the docstring); 480p: APG strength (34)")
    p.add_argument("--no-agreement", action="store_true",
                   help="leave out the untimed agreement check (two official calls and one of ours)")
    p.add_argument("--count-flops", action="store_true",
                   help="instead of timing, count each call's matmul and attention FLOPs once (torch's "
                        "FlopCounterMode) and project the ratios to other widths")
    p.add_argument("--no-pipeline", action="store_true", help="time the sampler only, not the pipeline")
    p.add_argument("--no-sampler", action="store_true", help="time the pipeline only, not the bare sampler")
    p.add_argument("--vpg-accelerated", nargs="*", default=[], metavar="PRESET",
                   help="also time our pipeline with semantic VPG (--vpg-scale) and each of these accelerator presets "
                        "(e.g. fastervar; 'none': VPG alone) against the official sampler; their outputs differ from "
                        "the official ones by design and are not compared")
    p.add_argument("--vpg-scale", type=float, default=1.5, help="VPG scale of the --vpg-accelerated runs")
    p.add_argument("--no-decode", action="store_true",
                   help="time the samplers without the VAE decode (the agreement check still decodes once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="rank by wall time, or by this process's CPU time (shared CPUs; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.depth < 2:
        p.error(f"--depth must be >= 2 (the official sampler runs >= 2 block chunks), got {args.depth}")
    if args.width < 512 or args.width % 512:
        p.error(f"--width must be a positive multiple of 512, got {args.width}")
    try:
        args.vae_channels = tuple(int(c) for c in args.vae_channels.split(","))
    except ValueError:
        p.error(f"--vae-channels must be 5 comma-separated integers, got {args.vae_channels!r}")
    if len(args.vae_channels) != 5 or min(args.vae_channels) < 8 or any(c % 8 for c in args.vae_channels):
        p.error(f"--vae-channels must be 5 positive multiples of 8, got {args.vae_channels}")
    if not 1 <= args.text_len <= TEXT_MAXLEN or args.repeats < 1 or args.warmup < 0:
        p.error(f"--text-len must be in [1, {TEXT_MAXLEN}], --repeats >= 1, --warmup >= 0")
    if args.frames is None:
        args.frames = FRAMES[args.settings][-1]
    if args.frames not in FRAMES[args.settings]:
        p.error(f"--frames must be one of {FRAMES[args.settings]} with --settings {args.settings}, got {args.frames}")
    args.guidance, default, largest = GUIDANCE[args.settings]
    if args.guidance_scale is None:
        args.guidance_scale = default
    if not 1.0 <= args.guidance_scale <= largest:
        p.error(f"--guidance-scale must be in [1, {largest:g}] with --settings {args.settings}, "
                f"got {args.guidance_scale}")
    return args


def block_chunks(depth: int) -> int:
    """Chunks of the official block layout: 6 as released when they divide the depth, else 2 or the depth."""
    return next(c for c in (6, 2, depth) if depth % c == 0)


# -- the official code -----------------------------------------------------------------------------
def import_official(repo: str | Path) -> dict[str, Any]:
    """The official ``Infinity`` class, ``Args``, video VAE builder and schedule helpers of the checkout at ``repo``."""
    vae_name = "infinity.models.videovae.models.load_vae_bsq_wan_absorb_patchify"
    m = official_stubs.import_infinity_checkout(
        repo, "InfinityStar", ("infinity/models/infinity.py", "infinity/schedules/infinity_elegant.py"),
        ("infinity.models.infinity", "infinity.utils.arg_util", vae_name, "infinity.schedules.dynamic_resolution",
         "infinity.schedules.infinity_elegant"), NEEDED)
    model, arg_util, vae = m["infinity.models.infinity"], m["infinity.utils.arg_util"], m[vae_name]
    resolution, elegant = m["infinity.schedules.dynamic_resolution"], m["infinity.schedules.infinity_elegant"]
    return {"Infinity": model.Infinity, "Args": arg_util.Args, "vae_module": vae, "resolution": resolution,
            "elegant": elegant}


def official_args(official: dict[str, Any], args: argparse.Namespace) -> Any:
    """The official ``Args`` as the script of ``--settings`` sets them (:data:`SETTINGS`)."""
    a = official["Args"]()
    for key, value in SETTINGS[args.settings].items():
        setattr(a, key, json.dumps(value) if key.endswith("_repetition") else value)
    a.text_channels, a.cfg = TEXT_CHANNELS, args.guidance_scale
    return a


def official_vae(official: dict[str, Any], a: Any, channels: tuple[int, ...]) -> Any:
    """The official video VAE (``video_vae_model``) with ``channels`` and no checkpoint (default init)."""
    module = official["vae_module"]
    real = module.AutoencoderKLCogVideoX

    def sized(vae_args):
        vae_args.block_out_channels = list(channels)
        return real(vae_args)

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({"vae": {}}, empty)  # loaded non-strictly by the official builder: nothing to load
        module.AutoencoderKLCogVideoX = sized
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return module.video_vae_model(str(empty), "dynamic", a.vae_type, global_args=a, test_mode=True)
        finally:
            module.AutoencoderKLCogVideoX = real


def _fill_zeros(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Zero-initialised parameters get random values too, so that their mapping is tested."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.normal_(0.0, 0.02, generator=gen)


def build_models(official: dict[str, Any], args: argparse.Namespace) -> tuple[Any, Any, Any, VPGInfinityStarPipeline]:
    """Seeded random official VAE + transformer, their ``Args``, and our pipeline holding the same weights."""
    a = official_args(official, args)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vae = official_vae(official, a, args.vae_channels)
    _fill_zeros(vae, gen)
    heads = args.width // 128
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints
        model = official["Infinity"](
            vae_local=vae, arch="qwen", depth=args.depth, block_chunks=block_chunks(args.depth),
            embed_dim=args.width, num_heads=heads, num_key_value_heads=heads // 4, mlp_ratio=4, drop_path_rate=0,
            text_channels=TEXT_CHANNELS, text_maxlen=TEXT_MAXLEN, raw_scale_schedule=None, checkpointing="full-block",
            pad_to_multiplier=128, use_flex_attn=a.use_flex_attn, add_lvl_embeding_on_first_block=0,
            num_of_label_value=a.num_of_label_value, rope2d_each_sa_layer=a.rope2d_each_sa_layer,
            rope2d_normalized_by_hw=a.rope2d_normalized_by_hw, pn=a.pn, apply_spatial_patchify=a.apply_spatial_patchify,
            inference_mode=True, train_h_div_w_list=[0.571, 1.0], video_frames=a.video_frames, other_args=a)
    _fill_zeros(model, gen)
    vae.eval()
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # ours must not share storage
    transformer = build_transformer(infer_transformer_config(state, TEXT_MAXLEN), state)
    vae_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    script = SETTINGS[args.settings]
    our_vae = build_vae(infer_vae_config(vae_state, script["detail_scale_min_tokens"]), vae_state)
    overrides = {k: v for k, v in script.items() if k not in ("vae_type", "videovae")}
    overrides.update(cfg=args.guidance_scale, h_div_w_template=H_DIV_W)
    pipe = VPGInfinityStarPipeline(transformer, our_vae, official_args=overrides)
    pipe.set_progress_bar_config(disable=True)
    return model, vae, a, pipe


# -- runs ------------------------------------------------------------------------------------------
def official_schedule(official: dict[str, Any], a: Any, frames: int) -> tuple[list[tuple[int, int, int]], Any]:
    """The scale schedule and ``context_info`` as ``tools/infer_video_720p.py`` computes them."""
    resolution = official["resolution"]
    meta, templates = resolution.get_dynamic_resolution_meta(a.dynamic_scale_schedule, a.video_frames)
    template = templates[abs(templates - H_DIV_W).argmin()]
    schedule = meta[template][a.pn]["pt2scale_schedule"][(frames - 1) // 4 + 1]
    a.first_full_spatial_size_scale_index = resolution.get_first_full_spatial_size_scale_index(schedule)
    a.tower_split_index = a.first_full_spatial_size_scale_index + 1
    context_info = official["elegant"].get_scale_pack_info(schedule, a.first_full_spatial_size_scale_index, a)
    return [tuple(s) for s in schedule], context_info


def text_inputs(args: argparse.Namespace) -> torch.Tensor:
    """Random prompt features ``(text_len, 2048)``."""
    return torch.randn(args.text_len, TEXT_CHANNELS, generator=torch.Generator().manual_seed(args.seed + 1))


class Recorder:
    """Records the official sampler's bits (``indices_to_codes`` of both codebooks) and decoded video."""

    def __init__(self, vae: Any) -> None:
        self.vae, self.bits, self.video = vae, [], None

    def __enter__(self) -> Recorder:
        q = self.vae.quantizer
        for lfq in (q.lfq_detail, q.lfq_semantic):
            lfq.indices_to_codes = self._recording(lfq.indices_to_codes)
        decode = self.vae.decode

        def record_decode(z, *a, **kw):
            self.video = decode(z, *a, **kw)
            return self.video

        self.vae.decode = record_decode
        return self

    def _recording(self, fn: Any) -> Any:
        def record(indices, *a, **kw):
            self.bits.append(indices.clone())
            return fn(indices, *a, **kw)
        return record

    def __exit__(self, *exc: Any) -> None:
        q = self.vae.quantizer
        del q.lfq_detail.indices_to_codes, q.lfq_semantic.indices_to_codes, self.vae.decode


def make_runs(model: Any, vae: Any, a: Any, pipe: VPGInfinityStarPipeline, official: dict[str, Any],
              args: argparse.Namespace, clock: ScaleClock) -> tuple[dict[str, Any], Any]:
    """The timed calls by name (each stamps its scales on ``clock``) and the bare sampler for the agreement."""
    schedule, context_info = official_schedule(official, a, args.frames)
    height, width = schedule[-1][1] * 16, schedule[-1][2] * 16
    plan = pipe.plan(args.frames, height, width)
    if [tuple(s) for s in plan.schedule] != schedule:
        raise RuntimeError(f"schedules differ: official {schedule}, ours {plan.schedule}")
    features = text_inputs(args)
    n, length = len(schedule), args.text_len
    taus = [a.tau_image] * a.tower_split_index + [a.tau_video] * (n - a.tower_split_index)
    label = (features, [length], torch.tensor([0, length], dtype=torch.int32), length)
    rope_embeds = official["elegant"].get_visual_rope_embeds

    def theirs(decode: bool = not args.no_decode, summed: bool = False) -> Any:
        # a single frame: the official post-processing (frame 1 copied over frame 0) fails, so the
        # summed codes are decoded here with the call it makes (`vae.decode(z, slice=True)`)
        codes_only = summed or not decode or args.frames == 1
        with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # tqdm and prints
            out = model.autoregressive_infer(
                vae=vae, scale_schedule=schedule, label_B_or_BLT=label, g_seed=args.seed, B=1,
                negative_label_B_or_BLT=None, cfg_list=[args.guidance_scale] * n, tau_list=taus, top_k=0, top_p=0.0,
                gt_leak=-1, gt_ls_Bl=None, low_vram_mode=False, args=a, get_visual_rope_embeds=rope_embeds,
                context_info=context_info, return_summed_code_only=codes_only)
            if summed or not decode:
                return out
            return vae.decode(out, slice=True) if codes_only else out[1]

    def sampler_state(decode: bool = True, trace: SamplerTrace | None = None):
        adapter = InfinityStarAdapter(pipe.transformer, pipe.vae)
        if args.guidance == "apg":
            cfg = AdaptiveProjectedGuidance(args.guidance_scale, norm_threshold=a.apg_norm_threshold, eta=0.0)
        else:
            cfg = ClassifierFreeGuidance(guidance_scale=args.guidance_scale, schedule="constant")
        state = adapter.prepare(plan, [features], None, with_null=True)
        with torch.inference_mode():
            run_next_scale(adapter, state, cfg=cfg, trace=trace, generator=torch.Generator().manual_seed(args.seed),
                           on_step=lambda step, *_: clock.stamp(step.scale))
            return state, adapter, adapter.decode(state) if decode else None

    def ours_sampler() -> torch.Tensor:
        """The shared sampler without the pipeline's argument checks and post-processing."""
        state, adapter, video = sampler_state(not args.no_decode)
        return adapter.latents(state) if video is None else video.add(1).mul(0.5).clamp(0, 1)

    def stamp(_pipe: Any, _index: int, scale: int, _tensors: dict) -> dict:
        clock.stamp(scale)
        return {}

    def ours(output_type: str = "latent" if args.no_decode else "pt") -> torch.Tensor:
        return pipe(prompt_embeds=features[None], num_frames=args.frames, height=height, width=width,
                    guidance_scale=args.guidance_scale, guidance=args.guidance, vpg_scale=1.0,
                    generator=torch.Generator().manual_seed(args.seed), output_type=output_type,
                    callback_on_step_end=stamp).frames

    def vpg_accelerated(preset: str) -> Any:
        def run() -> torch.Tensor:
            return pipe(prompt_embeds=features[None], num_frames=args.frames, height=height, width=width,
                        guidance_scale=args.guidance_scale, guidance=args.guidance, vpg_scale=args.vpg_scale,
                        vpg_scales="semantic", acceleration=None if preset == "none" else preset,
                        generator=torch.Generator().manual_seed(args.seed),
                        output_type="latent" if args.no_decode else "pt", callback_on_step_end=stamp).frames
        return run

    runs = {"official": theirs}
    if not args.no_sampler:
        runs["ours-sampler"] = ours_sampler
    if not args.no_pipeline:
        runs["ours"] = ours
    for preset in args.vpg_accelerated:
        runs[voi_names.VPG_PREFIX + preset] = vpg_accelerated(preset)
    return {name: clock.around(name, run) for name, run in runs.items()}, sampler_state


def install_clock(clock: ScaleClock, vae: Any, plan: StepPlan) -> contextlib.ExitStack:
    """Stamp the official sampler's steps: ``indices_to_codes`` of either codebook runs once per step."""
    stack = contextlib.ExitStack()
    for lfq in (vae.quantizer.lfq_detail, vae.quantizer.lfq_semantic):
        def stamped(indices, *a, _fn=lfq.indices_to_codes, **kw):
            done = clock.stamps()
            if done < len(plan.steps):  # a later call (none seen) would not be a sampling step
                clock.stamp(plan.steps[done].scale)
            return _fn(indices, *a, **kw)

        lfq.indices_to_codes = stamped
        stack.callback(delattr, lfq, "indices_to_codes")
    return stack


def agreement(vae: Any, runs: dict[str, Any], sampler_state: Any) -> dict[str, Any]:
    """Bits per step, summed codes and videos of ours against the official sampler (untimed runs)."""
    with Recorder(vae) as rec:
        summed = runs["official"](summed=True)
    with Recorder(vae) as dec:
        runs["official"](decode=True)
    trace = SamplerTrace()
    state, adapter, video = sampler_state(trace=trace)
    ours_bits = [trace.codes[i] for i in sorted(trace.codes)]
    bits_differ = [int((x.to(y.dtype) != y).sum()) if x.shape == y.shape else -1 for x, y in zip(ours_bits, rec.bits)]
    first = next((i for i, d in enumerate(bits_differ) if d), None)
    latents = adapter.latents(state)
    theirs = dec.video.float()
    result = {
        "bits_total": sum(b.numel() for b in rec.bits),
        "bits_differ_per_step": bits_differ,
        "first_differing_step": first,
        "steps": [len(rec.bits), len(ours_bits)],
        "max_abs_codes_diff": (latents - summed).abs().max().item(),
        "max_abs_video_diff": {"ours-sampler": (video - theirs).abs().max().item()},
    }
    if "ours" in runs:
        piped = runs["ours"](output_type="pt").float()  # (B, F, 3, H, W) in [0, 1], frame 1 copied over frame 0
        ref = theirs.add(1).mul(0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).clone()
        ref[:, 0] = ref[:, min(1, ref.shape[1] - 1)]
        result["max_abs_video_diff"]["ours"] = (piped - ref).abs().max().item() * 2  # on the [-1, 1] scale
    result["agree"] = result["steps"][0] == result["steps"][1] and not any(bits_differ)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    term = "plain CFG" if a["guidance"] == "cfg" else "APG (norm threshold 0.05)"
    settings = (f"settings {a['settings']}: depth {a['depth']}, width {a['width']}, {result['schedule']}, "
                f"{term} {a['guidance_scale']} on the logits, tau 1 / 0.4, VAE channels {a['vae_channels']}, "
                f"random text features "
                f"({a['text_len']} tokens), VAE decode {'not timed' if a['no_decode'] else 'included'}")
    head = run_header(result, settings)
    agree = result["agreement"]
    header = ["sampler", "median [min–max]", "our speed vs official (paired median [range])",
              "max abs video diff vs official ([-1, 1] scale)"]
    names = {**NAMES, "ours-sampler": "ours: `run_next_scale`"} if a["no_decode"] else dict(NAMES)
    diffs = dict(agree["max_abs_video_diff"]) if agree else {name: float("nan") for name in OURS}
    for preset in a.get("vpg_accelerated", []):
        names[voi_names.VPG_PREFIX + preset] = voi_names.vpg_name(preset)
        diffs[voi_names.VPG_PREFIX + preset] = float("nan")
    guided = {names[voi_names.VPG_PREFIX + preset] for preset in a.get("vpg_accelerated", [])}
    rows = speed_rows(result["times"], result["speedup"], names, diffs)
    for row in rows:
        if row[-1] == "nan":
            row[-1] = ("— (guided + accelerated: a different video by design)" if row[0] in guided
                       else "— (not checked: --no-agreement)")
    lines = [head, "", markdown_table(header, rows), ""]
    lines += [scale_table(result, names), ""]
    if agree is None:
        return "\n".join([*lines, "Agreement not checked in this run (--no-agreement)."])
    lines += ["Agreement (same seeded generator, multinomial per bit): bits "
             f"{'equal' if agree['agree'] else 'DIFFERENT'} "
             f"at every (scale, repetition) step ({agree['steps'][0]} steps, {agree['bits_total']} bits; first "
             f"differing step {agree['first_differing_step']}); max abs summed-codes diff "
             f"{agree['max_abs_codes_diff']:.2e}."]
    return "\n".join(lines)


def _cpu_attention_flops(query: Any, key: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    """SDPA's CPU kernel: ``QK^T`` and ``PV`` over (B, H, L, E) queries and S keys (torch counts only the GPU ones)."""
    b, h, length, e = query
    return 4 * b * h * length * key[-2] * e


CPU_ATTENTION = "_scaled_dot_product_flash_attention_for_cpu"


def count_flops(runs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each call once under ``FlopCounterMode``: its attention FLOPs (SDPA's CPU kernel) and every other
    matmul's (an attention that falls back to SDPA's math path would count as matmuls: none does here)."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, CPU_ATTENTION)
    if op not in flop_counter.flop_registry and op.default not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_cpu_attention_flops)
    counts = {}
    for name, run in runs.items():
        with flop_counter.FlopCounterMode(display=False) as counter:
            run()
        by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        attention = sum(v for k, v in by_op.items() if CPU_ATTENTION in k)
        counts[name] = {"attention": float(attention), "matmul": float(sum(by_op.values()) - attention)}
    return counts


def projected_ratios(counts: dict[str, dict[str, float]], width: int, widths: Sequence[int]
                     ) -> dict[str, dict[int, float]]:
    """Each call's FLOPs over the official call's at other widths: the blocks' matmuls grow with the width
    squared, attention with the width (the text and head projections, which grow with the width, count as
    matmuls: an overestimate of the matmuls' share, small at these sizes)."""
    def total(c: dict[str, float], w: int) -> float:
        return c["matmul"] * (w / width) ** 2 + c["attention"] * (w / width)

    base = counts["official"]
    return {name: {w: total(c, w) / total(base, w) for w in widths} for name, c in counts.items() if name != "official"}


def scale_table(result: dict[str, Any], names: dict[str, str]) -> str:
    """Median seconds per scale (its repetitions together) of every timed call, and the share of the call."""
    per = result["per_scale"]
    order = list(per)
    totals = {name: sum(per[name].values()) or 1.0 for name in order}
    header = ["scale", "grid (t, h, w)", *[f"{names.get(n, n)} (s, % of call)" for n in order]]
    rows = []
    for index, grid in enumerate(result["scales"]):
        cells = [f"{per[n][index]:.2f} ({100 * per[n][index] / totals[n]:.0f} %)" if index in per[n] else "—"
                 for n in order]
        rows.append([str(index), "×".join(map(str, grid)), *cells])
    return "Per scale (the end of one scale's last step to the end of the next's):\n\n" + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = import_official(args.reference_repo)
    model, vae, a, pipe = build_models(official, args)
    clock = ScaleClock()
    runs, sampler_state = make_runs(model, vae, a, pipe, official, args, clock)
    if args.count_flops:
        return flops_main(args, runs)
    agree = None if args.no_agreement else agreement(vae, runs, sampler_state)
    clock.calls.clear()  # the agreement's calls are not timed
    schedule, _ = official_schedule(official, a, args.frames)
    pixels = schedule[-1][1] * 16, schedule[-1][2] * 16
    plan = pipe.plan(args.frames, *pixels)
    with install_clock(clock, vae, plan):
        series = interleaved(runs, args.repeats, args.warmup, "cpu", args.clock)
    result: dict[str, Any] = {
        "benchmark": "vs_official_infinity_star",
        "model": f"InfinityStar-8B architecture at depth {args.depth}, width {args.width}, random weights",
        "params": count_params(pipe.transformer),
        "device": "cpu",
        "machine": machine_info("cpu"),
        "args": {**vars(args), "device": "cpu", "dtype": "float32", "top_k": 0, "top_p": 0.0},  # full multinomial
        "schedule": (f"{len(schedule)} scales ({len(plan.steps)} steps), {args.frames} frame(s) at "
                     f"{pixels[0]}x{pixels[1]} px"),
        "agreement": agree,
        "times": {name: s.times for name, s in series.items()},
        "wall": {name: s.wall for name, s in series.items()},
        "cpu": {name: s.cpu for name, s in series.items()},
        # official time / our time, per round (> 1: ours is faster)
        "speedup": {name: [o / u for o, u in zip(series["official"].times, series[name].times)]
                    for name in runs if name != "official"},
        # median seconds per scale index (its repetitions together) over the timed rounds
        "per_scale": {name: clock.per_scale(name, args.clock, args.warmup) for name in runs},
        "scales": [list(s) for s in schedule],
    }
    markdown = to_markdown(result)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


def flops_main(args: argparse.Namespace, runs: dict[str, Any]) -> dict[str, Any]:
    counts = count_flops(runs)
    widths = sorted({args.width, 1024, 2048, WIDTH})
    ratios = projected_ratios(counts, args.width, widths)
    result = {"benchmark": "vs_official_infinity_star --count-flops", "args": vars(args), "flops": counts,
              "ratio_to_official_by_width": ratios, "machine": machine_info("cpu")}
    header = ["call", f"matmul TFLOP (width {args.width})", "attention TFLOP",
              *[f"vs official at width {w}" for w in widths]]
    rows = [[name, f"{c['matmul'] / 1e12:.2f}", f"{c['attention'] / 1e12:.2f}",
             *(["1"] * len(widths) if name == "official" else [f"{ratios[name][w]:.3f}" for w in widths])]
            for name, c in counts.items()]
    markdown = (f"FLOPs of one call each (settings {args.settings}, depth {args.depth}, width {args.width}, "
                f"{args.frames} frames; attention = SDPA's QK^T and PV):\n\n" + markdown_table(header, rows))
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
