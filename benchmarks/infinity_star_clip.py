"""Time and peak memory of one InfinityStar clip (sampling + decoding), CFG/APG alone vs with VPG.

Random weights of the released architecture are enough for cost (no download):

    python -m benchmarks.infinity_star_clip --model 8b --size 720p --device cuda --dtype bfloat16
    python -m benchmarks.infinity_star_clip --model 8b --size 480p --device cuda --dtype bfloat16 --offload model
    python -m benchmarks.infinity_star_clip --model parity --size fixture --frames 1 --no-decode   # CPU smoke run

``--model parity`` uses the tiny official-format model of ``../shared/parity/infinity_star``. Peak
memory is ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import init_empty_weights

from benchmarks.common import DTYPES, fmt_mib, fmt_seconds, machine_info, markdown_table, peak_rss, timed, write_outputs
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.models.infinity_star import InfinityStarTransformer, InfinityStarVideoVAE
from vpg_pipelines.models.infinity_star.settings import resolve_args

SIZES = {
    # (official args overrides, (height, width), frames): the 720p and 480p scripts, and the fixtures' size
    "720p": ({}, (720, 1280), 81),
    "480p": ({"pn": "0.40M", "image_scale_repetition": [3] * 14, "video_scale_repetition": [3] * 12 + [2, 1],
              "detail_scale_min_tokens": 350, "semantic_scales": 11}, (480, 848), 81),
    "fixture": ({"pn": "0.06M", "image_scale_repetition": [3] * 11, "video_scale_repetition": [3] * 8 + [2, 1, 1],
                 "detail_scale_min_tokens": 100, "semantic_scales": 8}, (192, 336), 17),
}
CONFIGS = {
    "guidance": {"vpg_scale": 1.0},
    "vpg-semantic": {"vpg_scale": 1.5, "vpg_scales": "semantic"},
    "vpg-all": {"vpg_scale": 1.5, "vpg_scales": "all"},
}


def random_pipeline(args: dict, device: str, dtype: torch.dtype, seed: int = 0, **sizes):
    """The released architecture (8.77 B transformer, video VAE) with seeded random weights on ``device``.

    ``sizes`` override constructor arguments (``transformer_*`` / ``vae_*``) for smaller smoke runs.
    """


    t_sizes = {k[len("transformer_"):]: v for k, v in sizes.items() if k.startswith("transformer_")}
    v_sizes = {k[len("vae_"):]: v for k, v in sizes.items() if k.startswith("vae_")}
    with init_empty_weights():
        transformer = InfinityStarTransformer(**t_sizes)
    transformer = transformer.to_empty(device=device).to(dtype)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    for name in InfinityStarTransformer._keep_in_fp32_modules:
        getattr(transformer, name).float()
    torch.manual_seed(seed)
    with torch.device(device):
        vae = InfinityStarVideoVAE(detail_scale_min_tokens=args["detail_scale_min_tokens"], **v_sizes)
    return VPGInfinityStarPipeline(transformer.eval(), vae.eval(), official_args=args)


def parity_pipeline(overrides: dict, dtype: torch.dtype):

    shared = Path(os.environ.get("VPG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    root = shared / "parity" / "infinity_star"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    config["args"] = {**config.get("args", {}), **overrides}
    return VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                 config=config, torch_dtype=dtype)


def _reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated()

    return peak_rss()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("8b", "parity"), default="8b")
    parser.add_argument("--size", choices=tuple(SIZES), default="720p")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the size's)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--offload", choices=("none", "model"), default="none")
    parser.add_argument("--no-decode", action="store_true", help="time sampling only")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json")
    parser.add_argument("--out-md")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    configs = [c for c in opts.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        parser.error(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    if opts.offload == "model" and torch.device(opts.device).type != "cuda":
        parser.error("--offload model needs a CUDA device")
    overrides, (height, width), frames = SIZES[opts.size]
    frames = opts.frames or frames
    dtype = DTYPES[opts.dtype]

    args = resolve_args(overrides)
    if opts.model == "8b":
        pipe = random_pipeline(args, "cpu" if opts.offload == "model" else opts.device, dtype, opts.seed)
    else:
        pipe = parity_pipeline(overrides, dtype)
    if opts.offload == "model":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(opts.device)
    pipe.set_progress_bar_config(disable=True)
    channels = pipe.transformer.config.text_channels
    text = torch.randn(1, 64, channels, generator=torch.Generator().manual_seed(opts.seed))
    params = sum(p.numel() for p in pipe.transformer.parameters())
    rows, results = [], {}
    for name in configs:
        _reset_peak(opts.device)

        def sample(name=name):
            return pipe(prompt_embeds=text, num_frames=frames, height=height, width=width, output_type="latent",
                        generator=torch.Generator().manual_seed(opts.seed), **CONFIGS[name]).frames

        sample_s, _, latents = timed(sample, opts.device)
        decode_s = None
        if not opts.no_decode:
            decode_s, _, _ = timed(lambda latents=latents: pipe.decode_latents(latents), opts.device)
        peak = _peak(opts.device)
        results[name] = {"sample_s": sample_s, "decode_s": decode_s, "peak_bytes": peak, "steps": pipe.num_timesteps}
        total = sample_s + (decode_s or 0.0)
        rows.append([f"`{name}`", pipe.num_timesteps, fmt_seconds(sample_s),
                     "–" if decode_s is None else fmt_seconds(decode_s), fmt_seconds(total), fmt_mib(peak)])
    machine = machine_info(opts.device)
    weights = "random weights" if opts.model == "8b" else "the parity fixtures' weights"
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    header = (f"InfinityStar **{opts.model}** ({params / 1e6:.1f} M transformer parameters, {weights}), "
              f"{height}x{width}, {frames} frames, {opts.dtype}, offload {opts.offload}, on `{opts.device}`"
              f"{gpu}; {machine['date']}; torch {machine['torch']}.")
    markdown = header + "\n\n" + markdown_table(
        ["config", "steps", "sampling", "decoding", "per clip", "peak memory"], rows)
    result = {"model": opts.model, "size": opts.size, "frames": frames, "params": params, "args": vars(opts),
              "machine": machine, "configs": results}
    write_outputs(result, markdown, opts.out_json, opts.out_md)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
