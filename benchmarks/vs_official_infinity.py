"""Our Infinity sampler against the official one: same architecture, same weights, same greedy samples.

The official code is imported at run time from a local checkout of https://github.com/FoundationVision/Infinity
(``--reference-repo``); nothing of it ships with this package. Its CUDA-only imports are replaced by
the CPU stand-ins of ``benchmarks/official_stubs.py`` (exact float32 attention in place of flash-attn,
eager fused norms); it also needs ``einops`` and ``pytz`` (``pip install einops pytz``).

The official Infinity-2B (width 2048, 16 heads, shared AdaLN, flan-T5-XL text width 2048) and its d32
BSQ-VAE are built with seeded random weights, at ``--depth`` blocks (the 2B has 32); our transformer and
VAE are loaded from the official state dicts with our own converters. Text features are random (no T5),
fed as the official sampler takes them. Both samplers run greedy (``top_k=1``) with CFG on the logits
at every scale, VAE decode included; the script checks that the bits of every scale are equal and
reports the largest difference of the summed codes and of the images.

    python benchmarks/vs_official_infinity.py --reference-repo /path/to/Infinity --depth 4 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import official_stubs
from benchmarks.common import (
    CLOCKS,
    count_params,
    interleaved,
    machine_info,
    markdown_table,
    run_header,
    speed_rows,
    write_outputs,
)
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.loading.infinity import build_transformer, build_vae
from vpg_pipelines.models.infinity.adapter import InfinityAdapter
from vpg_pipelines.models.infinity.schedules import PIXEL_BUDGETS, TEMPLATE_GRIDS, schedule_from_template
from vpg_pipelines.pipelines.pipeline_vpg_infinity import VPGInfinityPipeline
from vpg_pipelines.sampling.next_scale import run_next_scale

# The released Infinity-2B (manifest ``infinity_2b``) and its VAE (``infinity_vae_d32``).
WIDTH, HEADS, TEXT_CHANNELS, TEXT_MAXLEN, BITS = 2048, 16, 2048, 512, 32
VAE_CH_MULT = (1, 2, 4, 4, 4)
NEEDED = ("einops", "pytz")
OURS = ("ours", "ours-sampler")
NAMES = {"official": "official `autoregressive_infer_cfg`", "ours": "ours: `VPGInfinityPipeline.__call__`",
         "ours-sampler": "ours: `run_next_scale` + decode"}
VPG_PREFIX = "ours-vpg-semantic+"


def vpg_name(preset: str) -> str:
    """Row name of an accelerated semantic-VPG run (``--vpg-accelerated``)."""
    return f"ours: pipeline, semantic VPG + `acceleration={preset!r}`" if preset != "none" else \
        "ours: pipeline, semantic VPG, no accelerator"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-repo", required=True, help="local checkout of the official Infinity repository")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks (even, >= 2; the 2B has 32)")
    p.add_argument("--width", type=int, default=WIDTH, help="transformer width (2048 for the 2B; 128 per head)")
    p.add_argument("--h-div-w", type=float, default=1.0, help="aspect template")
    p.add_argument("--pn", default="0.06M", choices=list(PIXEL_BUDGETS), help="pixel budget (0.06M: 7 scales, 256 px)")
    p.add_argument("--vae-ch-mult", default=",".join(map(str, VAE_CH_MULT)),
                   help="VAE channel multipliers of base 128 (d32: 1,2,4,4,4; 1,1,1,1,1 for quick runs)")
    p.add_argument("--text-len", type=int, default=16, help="prompt length in tokens (the next prompts are shorter)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=1, help="1 = greedy (outputs must agree)")
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--no-pipeline", action="store_true", help="time the sampler only, not the pipeline")
    p.add_argument("--no-sampler", action="store_true", help="time the pipeline only, not the bare sampler")
    p.add_argument("--vpg-accelerated", nargs="*", default=[], metavar="PRESET",
                   help="also time our pipeline with semantic VPG (--vpg-scale) and each of these accelerator presets "
                        "(e.g. fastvar fastervar; 'none': VPG alone) against the official CFG-only sampler; their "
                        "outputs differ from the official ones by design and are not compared")
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
    if args.depth < 2 or args.depth % 2:
        p.error(f"--depth must be an even number >= 2 (the official sampler needs >= 2 block chunks), got {args.depth}")
    if args.width < 128 or args.width % 128:
        p.error(f"--width must be a positive multiple of 128, got {args.width}")
    if args.h_div_w not in TEMPLATE_GRIDS:
        p.error(f"--h-div-w must be one of {sorted(TEMPLATE_GRIDS)}, got {args.h_div_w}")
    try:
        args.vae_ch_mult = tuple(int(c) for c in args.vae_ch_mult.split(","))
    except ValueError:
        p.error(f"--vae-ch-mult must be 5 comma-separated integers, got {args.vae_ch_mult!r}")
    if len(args.vae_ch_mult) != 5 or min(args.vae_ch_mult) < 1:
        p.error(f"--vae-ch-mult must be 5 positive integers (patch 16), got {args.vae_ch_mult}")
    if not 1 <= args.text_len <= TEXT_MAXLEN or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error(f"--text-len must be in [1, {TEXT_MAXLEN}], --batch and --repeats >= 1, --warmup >= 0")
    return args


def block_chunks(depth: int) -> int:
    """Chunks of the official block layout: 8 as released when they divide the depth, else fewer (>= 2)."""
    return math.gcd(depth, 8)


# -- the official code -----------------------------------------------------------------------------
def import_official(repo: str | Path) -> dict[str, Any]:
    """The official ``Infinity`` class, ``vae_model`` and schedule table of the checkout at ``repo``."""
    m = official_stubs.import_infinity_checkout(
        repo, "Infinity", ("infinity/models/infinity.py", "infinity/utils"),
        ("infinity.models.infinity", "infinity.models.bsq_vae.vae", "infinity.utils.dynamic_resolution"), NEEDED)
    model, vae, resolution = (m["infinity.models.infinity"], m["infinity.models.bsq_vae.vae"],
                              m["infinity.utils.dynamic_resolution"])
    return {"Infinity": model.Infinity, "vae_model": vae.vae_model,
            "dynamic_resolution_h_w": resolution.dynamic_resolution_h_w}


def official_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments of the released 2B (``infinity_2b`` manifest), at ``--depth``."""
    return dict(
        text_channels=TEXT_CHANNELS, text_maxlen=TEXT_MAXLEN, embed_dim=args.width, depth=args.depth,
        num_heads=args.width // 128, mlp_ratio=4, norm_eps=1e-6, drop_path_rate=0.0, shared_aln=True,
        cond_drop_rate=0.1, checkpointing=None, customized_flash_attn=False, fused_norm=True,
        pad_to_multiplier=128, use_flex_attn=False, add_lvl_embeding_only_first_block=1, use_bit_label=1,
        rope2d_each_sa_layer=1, rope2d_normalized_by_hw=2, pn=args.pn, apply_spatial_patchify=0,
        inference_mode=True, train_h_div_w_list=[args.h_div_w], block_chunks=block_chunks(args.depth),
    )


def build_models(official: dict[str, Any], args: argparse.Namespace) -> tuple[Any, Any, VPGInfinityPipeline]:
    """Seeded random official VAE + Infinity, and our pipeline holding the same weights."""
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print
        vae = official["vae_model"]({}, "dynamic", BITS, 2**BITS, patch_size=16,
                                    encoder_ch_mult=list(args.vae_ch_mult), decoder_ch_mult=list(args.vae_ch_mult))
        model = official["Infinity"](vae_local=vae, **official_kwargs(args))
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for param in model.parameters():  # the zero-initialised biases too, so that their mapping is tested
            if not param.any():
                param.normal_(0.0, 0.02, generator=gen)
    vae.eval()
    model.eval()
    ours_cfg = {"codebook_dim": BITS, "apply_spatial_patchify": 0, "text_channels": TEXT_CHANNELS,
                "text_maxlen": TEXT_MAXLEN, "embed_dim": args.width, "depth": args.depth,
                "num_heads": args.width // 128, "mlp_ratio": 4.0, "norm_eps": 1e-6, "shared_aln": True,
                "cos_attn": True, "num_block_chunks": block_chunks(args.depth),
                "add_lvl_embeding_only_first_block": 1, "rope2d_normalized_by_hw": 2}
    vae_cfg = {"codebook_dim": BITS, "patch_size": 16, "base_ch": 128, "encoder_ch_mult": args.vae_ch_mult,
               "decoder_ch_mult": args.vae_ch_mult, "num_res_blocks": 2}
    clone = {k: v.detach().clone() for k, v in model.state_dict().items()}  # ours must not share storage
    transformer = build_transformer(ours_cfg, clone)
    our_vae = build_vae(vae_cfg, {k: v.detach().clone() for k, v in vae.state_dict().items()})
    h, w = schedule_from_template(args.h_div_w, args.pn).image_size
    pipe = VPGInfinityPipeline(transformer, our_vae, default_height=h, default_width=w)
    pipe.set_progress_bar_config(disable=True)
    return model, vae, pipe


# -- runs ------------------------------------------------------------------------------------------
def text_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, list[int]]:
    """Random compact text features ``(sum(lens), 2048)`` and the prompt lengths."""
    lens = [max(1, args.text_len - 3 * i) for i in range(args.batch)]
    gen = torch.Generator().manual_seed(args.seed + 1)
    return torch.randn(sum(lens), TEXT_CHANNELS, generator=gen), lens


class Recorder:
    """Records the official sampler's bits (``indices_to_codes``) and summed codes / image (``decode``)."""

    def __init__(self, vae: Any) -> None:
        self.vae, self.bits, self.codes, self.image = vae, [], None, None

    def __enter__(self) -> Recorder:
        lfq, vae = self.vae.quantizer.lfq, self.vae
        to_codes, decode = lfq.indices_to_codes, vae.decode

        def record_bits(indices, *a, **kw):
            self.bits.append(indices.clone())
            return to_codes(indices, *a, **kw)

        def record_decode(z):
            self.codes = z.clone()
            self.image = decode(z)
            return self.image

        lfq.indices_to_codes, vae.decode = record_bits, record_decode
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.vae.quantizer.lfq.indices_to_codes, self.vae.decode


def make_runs(model: Any, vae: Any, pipe: VPGInfinityPipeline, official: dict[str, Any],
              args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    schedule = schedule_from_template(args.h_div_w, args.pn)
    official_schedule = official["dynamic_resolution_h_w"][args.h_div_w][args.pn]["scales"]
    official_schedule = [(1, h, w) for _, h, w in official_schedule]
    if official_schedule != schedule.scale_schedule:
        raise RuntimeError(f"schedules differ: official {official_schedule}, ours {schedule.scale_schedule}")
    features, lens = text_inputs(args)
    n = schedule.num_scales
    lens_t = torch.tensor(lens, dtype=torch.int32)
    cu_seqlens = F.pad(lens_t.cumsum(0, dtype=torch.int32), (1, 0))
    height, width = schedule.image_size
    embeds = torch.zeros(args.batch, max(lens), TEXT_CHANNELS)
    mask = torch.zeros(args.batch, max(lens), dtype=torch.long)
    for i, (row, length) in enumerate(zip(features.split(lens), lens)):
        embeds[i, :length], mask[i, :length] = row, 1

    def theirs(decode: bool = not args.no_decode) -> Any:
        with torch.inference_mode():
            _, _, img = model.autoregressive_infer_cfg(
                vae=vae, scale_schedule=official_schedule, label_B_or_BLT=(features, lens_t, cu_seqlens, max(lens)),
                B=args.batch, g_seed=args.seed, cfg_list=[args.guidance_scale] * n, tau_list=[args.tau] * n,
                top_k=args.top_k, top_p=args.top_p, returns_vemb=1, cfg_insertion_layer=[0], vae_type=BITS,
                ret_img=decode, inference_mode=True)
        return img

    def sampler_state(decode: bool = True):
        adapter = InfinityAdapter(pipe.transformer, pipe.vae)
        cfg = ClassifierFreeGuidance(guidance_scale=args.guidance_scale, schedule="constant", layer=0)
        state = adapter.prepare(features, lens, schedule, with_null=True, tau=args.tau, top_k=args.top_k,
                                top_p=args.top_p)
        with torch.inference_mode():
            run_next_scale(adapter, state, cfg=cfg, generator=torch.Generator().manual_seed(args.seed))
            return state, adapter.decode(state) if decode else None

    def ours_sampler() -> torch.Tensor:
        """The shared sampler without the pipeline's argument checks and post-processing."""
        state, image = sampler_state(not args.no_decode)
        return state.latents if image is None else image.add(1).mul(0.5).clamp(0, 1)

    def ours(output_type: str = "latent" if args.no_decode else "pt") -> torch.Tensor:
        return pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=height, width=width,
                    guidance_scale=args.guidance_scale, tau=args.tau, top_k=args.top_k, top_p=args.top_p,
                    vpg_scale=1.0, generator=torch.Generator().manual_seed(args.seed), output_type=output_type).images

    def vpg_accelerated(preset: str) -> Any:
        def run() -> torch.Tensor:
            return pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=height, width=width,
                        guidance_scale=args.guidance_scale, tau=args.tau, top_k=args.top_k, top_p=args.top_p,
                        vpg_scale=args.vpg_scale, vpg_scales="semantic",
                        acceleration=None if preset == "none" else preset,
                        generator=torch.Generator().manual_seed(args.seed),
                        output_type="latent" if args.no_decode else "pt").images
        return run

    runs = {"official": theirs}
    if not args.no_sampler:
        runs["ours-sampler"] = ours_sampler
    if not args.no_pipeline:
        runs["ours"] = ours
    for preset in args.vpg_accelerated:
        runs[VPG_PREFIX + preset] = vpg_accelerated(preset)
    return runs, sampler_state


def agreement(vae: Any, runs: dict[str, Any], sampler_state: Any) -> dict[str, Any]:
    """Bits per scale, summed codes and images of ours against the official sampler (untimed runs)."""
    with Recorder(vae) as rec:
        runs["official"](decode=True)
    state, image = sampler_state()
    theirs01 = rec.image.float().add(1).mul(0.5)
    bits_differ = [int((a.to(b.dtype) != b).sum()) for a, b in zip(state.bits, rec.bits)]
    result = {
        "bits_total": sum(b.numel() for b in rec.bits),
        "bits_differ_per_scale": bits_differ,
        "scales": [len(rec.bits), len(state.bits)],
        "max_abs_codes_diff": (state.latents.squeeze(2) - rec.codes).abs().max().item(),
        "max_abs_image_diff": {"ours-sampler": (image - rec.image).abs().max().item()},
    }
    if "ours" in runs:
        piped = runs["ours"](output_type="pt").float()  # [0, 1]: twice the difference on the [-1, 1] scale
        result["max_abs_image_diff"]["ours"] = (piped - theirs01).abs().max().item() * 2
    result["agree"] = result["scales"][0] == result["scales"][1] and not any(bits_differ)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    settings = (f"depth {a['depth']}, width {a['width']}, {result['schedule']}, tau {a['tau']}, CFG on the logits, "
                f"VAE ch_mult {a['vae_ch_mult']}, random text features ({a['text_len']} tokens), "
                f"VAE decode {'not timed' if a['no_decode'] else 'included'}")
    head = run_header(result, settings)
    agree = result["agreement"]
    header = ["sampler", "median [min–max]", "our speed vs official (paired median [range])",
              "max abs image diff vs official ([-1, 1] scale)"]
    names = {**NAMES, "ours-sampler": "ours: `run_next_scale`"} if a["no_decode"] else dict(NAMES)
    diffs = dict(agree["max_abs_image_diff"])
    for preset in a.get("vpg_accelerated", []):
        names[VPG_PREFIX + preset] = vpg_name(preset)
        diffs[VPG_PREFIX + preset] = float("nan")  # a different (guided, accelerated) image by design
    rows = speed_rows(result["times"], result["speedup"], names, diffs)
    for row in rows:
        if row[-1] == "nan":
            row[-1] = "— (guided + accelerated: a different image by design)"
    lines = [head, "", markdown_table(header, rows), "",
             f"Agreement: greedy bits {'equal' if agree['agree'] else 'DIFFERENT'} at every scale "
             f"({agree['bits_total']} bits; differing per scale {agree['bits_differ_per_scale']}); "
             f"max abs summed-codes diff {agree['max_abs_codes_diff']:.2e}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = import_official(args.reference_repo)
    model, vae, pipe = build_models(official, args)
    runs, sampler_state = make_runs(model, vae, pipe, official, args)
    agree = agreement(vae, runs, sampler_state)
    series = interleaved(runs, args.repeats, args.warmup, "cpu", args.clock)
    schedule = schedule_from_template(args.h_div_w, args.pn)
    h, w = schedule.image_size
    result: dict[str, Any] = {
        "benchmark": "vs_official_infinity",
        "model": f"Infinity-2B architecture at depth {args.depth}, random weights",
        "params": count_params(pipe.transformer),
        "device": "cpu",
        "machine": machine_info("cpu"),
        "args": {**vars(args), "device": "cpu", "dtype": "float32"},
        "schedule": f"{schedule.num_scales} scales ({sum(schedule.num_sites)} tokens), {h}x{w} px",
        "agreement": agree,
        "times": {name: s.times for name, s in series.items()},
        "wall": {name: s.wall for name, s in series.items()},
        "cpu": {name: s.cpu for name, s in series.items()},
        # official time / our time, per round (> 1: ours is faster)
        "speedup": {name: [o / u for o, u in zip(series["official"].times, series[name].times)]
                    for name in runs if name != "official"},
    }
    markdown = to_markdown(result)
    write_outputs(result, markdown, args.out_json, args.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
