"""The ``vpg`` command line: ``vpg generate | demo | convert``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _scales(text: str):
    if text in ("all", "semantic"):
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--vpg-scales must be 'all', 'semantic' or a comma list of ints, got {text!r}"
        ) from None


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (image i uses seed + i)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG strength (VAR: the official cfg)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--vpg-scale", type=float, default=None, help="VPG weight w (1 = off); default: per model")
    p.add_argument("--vpg-corruption", type=float, default=0.5, help="fraction p of corrupted sites per scale")
    p.add_argument("--vpg-mode", default="full", choices=["full", "token", "position", "codebook"])
    p.add_argument("--vpg-refresh", default="persistent", choices=["persistent", "resample"])
    p.add_argument("--vpg-scales", type=_scales, default="all", help="'all', 'semantic' or e.g. '1,2,3'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--compare", action="store_true", help="write a labelled grid: same seeds without | with VPG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpg", description="Visual Prefix Guidance for next-scale models")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images with a VAR model (or a saved Infinity pipeline folder)")
    gen.add_argument("--model", required=True,
                     help="'demo' (bundled), a saved pipeline folder (VAR or Infinity), or an official var_d*.pth "
                          "(with --vae)")
    gen.add_argument("--vae", default=None, help="official VQVAE file (vae_ch160v4096z32.pth) with a .pth --model")
    gen.add_argument("--config", default=None, help="JSON with the official constructor args {'vqvae':…,'var':…}")
    gen.add_argument("--prompt", action="append", required=True,
                     help="class name or id (Infinity: text); repeat for several")
    gen.add_argument("--negative-prompt", default=None, help="Infinity only: replaces the learned null text")
    gen.add_argument("--height", type=int, default=None, help="Infinity only: output height (snapped to a template)")
    gen.add_argument("--width", type=int, default=None, help="Infinity only: output width (snapped to a template)")
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt")
    gen.add_argument("--out", default="out.png", help="output PNG (several images: a grid)")
    _add_sampling_args(gen)

    demo = sub.add_parser("demo", help="the bundled tiny model: a labelled grid without | with VPG (offline)")
    demo.add_argument("--out", default="vpg_demo.png")
    demo.add_argument("--seeds", type=int, default=4, help="number of seeds (rows per class)")
    demo.add_argument("--vpg-scale", type=float, default=None)
    demo.add_argument("--classes", default=None,
                      help="comma-separated class names to draw (default: all 30), e.g. face-happy,plant")

    conv = sub.add_parser("convert", help="official VAR files -> a diffusers-style pipeline folder (safetensors)")
    conv.add_argument("--var", required=True, help="official var_d*.pth (local path or hub file name)")
    conv.add_argument("--vae", required=True, help="official vae_ch160v4096z32.pth")
    conv.add_argument("--config", default=None, help="JSON with the official constructor args")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    conv.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    return parser


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA GPU is available")
    return device


def load_pipeline(model: str, vae: str | None = None, config: str | None = None, dtype: torch.dtype | None = None):
    from .pipelines.pipeline_vpg_var import VPGVARPipeline

    if model == "demo":
        from .demo import load_demo_pipeline

        return load_demo_pipeline()
    path = Path(model)
    if path.is_dir() and (path / "model_index.json").exists():
        index = json.loads((path / "model_index.json").read_text())
        cls = VPGVARPipeline
        if index.get("_class_name") == "VPGInfinityPipeline":
            from .pipelines.pipeline_vpg_infinity import VPGInfinityPipeline as cls
        return cls.from_pretrained(str(path), **({"dtype": dtype} if dtype else {}))
    if vae is None:
        raise ValueError(f"--model {model!r} is not a pipeline folder; pass the official VQVAE file with --vae")
    cfg = json.loads(Path(config).read_text()) if config else None
    return VPGVARPipeline.from_official(model, vae, config=cfg, torch_dtype=dtype)


def _generate(args: argparse.Namespace) -> None:
    from .visual import comparison_grid

    device = _device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else None)
    pipe = load_pipeline(args.model, args.vae, args.config, dtype).to(device)
    text_to_image = type(pipe).__name__ == "VPGInfinityPipeline"
    prompts = [p if text_to_image or not p.strip().isdigit() else int(p) for p in args.prompt]
    count = len(prompts) * args.num_images
    options = {"guidance_scale": args.guidance_scale, "top_k": args.top_k, "top_p": args.top_p}
    if text_to_image:
        options |= {"negative_prompt": args.negative_prompt, "height": args.height, "width": args.width}
    elif {args.negative_prompt, args.height, args.width} != {None}:
        raise ValueError("--negative-prompt, --height and --width apply to Infinity pipeline folders only")
    kwargs = {k: v for k, v in options.items() if v is not None}
    vpg = dict(vpg_scale=args.vpg_scale, vpg_corruption=args.vpg_corruption, vpg_mode=args.vpg_mode,
               vpg_refresh=args.vpg_refresh, vpg_scales=args.vpg_scales)

    def run(**extra):
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(count)]
        return pipe(prompt=prompts, num_images_per_prompt=args.num_images, generator=generators, **kwargs,
                    **extra).images

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{p} #{args.seed + i}" for i, p in enumerate(p for p in prompts for _ in range(args.num_images))]
    if args.compare:
        plain = run(**{**vpg, "vpg_scale": 1.0})
        guided = run(**vpg)
        w = pipe.prefix_guidance(**vpg).scale
        grid = comparison_grid([plain, guided], ["without VPG", f"with VPG (w={w:g})"], names)
        grid.save(out)
    else:
        images = run(**vpg)
        if len(images) == 1:
            images[0].save(out)
        else:
            comparison_grid([images], [f"w={pipe.prefix_guidance(**vpg).scale:g}"], names).save(out)
    print(f"wrote {out}")


def _convert(args: argparse.Namespace) -> None:
    from .pipelines.pipeline_vpg_var import VPGVARPipeline

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder (nothing was overwritten)")
    cfg = json.loads(Path(args.config).read_text()) if args.config else None
    pipe = VPGVARPipeline.from_official(args.var, args.vae, config=cfg, torch_dtype=DTYPES[args.dtype])
    tmp = out.with_name(out.name + ".partial")
    pipe.save_pretrained(str(tmp))
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the folder appears only once complete
    print(f"wrote {out}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    path = run_demo(args.out, num_seeds=args.seeds, vpg_scale=args.vpg_scale, classes=classes)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"generate": _generate, "convert": _convert, "demo": _demo}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"vpg {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
