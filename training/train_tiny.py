"""Train the bundled tiny class-conditional VAR (VQVAE + transformer) on the 32x32 emoji set.

Stage 1 trains our ``VARVQVAE`` (tiny config, 8x8 latent, scales 1,2,3,4,6,8) with the official
training-time quantizer behaviour: residual multi-scale nearest-code lookup, codebook loss
``|f_hat - sg(f)|²`` + commitment ``beta |sg(f_hat) - f|²`` averaged over scales, and the
straight-through estimator ``f + sg(f_hat - f)`` into the decoder. Unused codes are restarted on
residual vectors of the current batch (small data, few steps: otherwise much of the codebook dies).

Stage 2 trains our ``VARTransformer`` by teacher forcing on the frozen VQVAE's per-scale indices,
class-conditional, with 10% class dropout (the null class) for classifier-free guidance.

Everything is deterministic from ``--seed`` for a given thread count. CPU-sized defaults:

    python training/build_emoji_dataset.py
    python training/train_tiny.py --name emoji32   # ~10 + ~16 min on one free core

writes ``training/runs/<name>/{vqvae,transformer}.safetensors``, ``config.json`` (constructor
arguments, labels, losses, timings) and ``samples.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vpg_pipelines import VPGVARPipeline  # noqa: E402
from vpg_pipelines.evaluation.emoji_classifier import (  # noqa: E402
    classifier_accuracy,
    extract_features,
    load_classifier,
)
from vpg_pipelines.evaluation.frechet import frechet_distance  # noqa: E402
from vpg_pipelines.models.var.transformer import VARTransformer  # noqa: E402
from vpg_pipelines.models.var.vqvae import VARVQVAE  # noqa: E402

DATA = REPO / "training" / "data" / "emoji32.npz"
DEFAULT_CLASSIFIER = REPO / "training" / "data" / "classifier_seed0.safetensors"  # benchmarks/quality_metrics.py
RUNS = REPO / "training" / "runs"
PATCH_NUMS = (1, 2, 3, 4, 6, 8)
NO_FLIP = ("symbol-text", "symbol-sign", "flag")  # mirrored text / signs / flags are not emoji

VQVAE_CONFIG = {
    "vocab_size": 256,
    "z_channels": 16,
    "ch": 32,
    "ch_mult": [1, 1, 2],  # downsample 4: 32x32 -> 8x8 latent
    "num_res_blocks": 1,
    "dropout": 0.0,
    "beta": 0.25,
    "using_znorm": False,
    "quant_conv_ks": 3,
    "quant_resi": 0.5,
    "share_quant_resi": 4,
    "default_qresi_counts": 0,
    "v_patch_nums": list(PATCH_NUMS),
    "test_mode": True,
}

TRANSFORMER_CONFIG = {
    "vocab_size": VQVAE_CONFIG["vocab_size"],
    "vae_channels": VQVAE_CONFIG["z_channels"],
    "num_classes": 30,
    "depth": 4,
    "embed_dim": 128,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "norm_eps": 1e-6,
    "shared_aln": False,
    "attn_l2_norm": True,
    "patch_nums": list(PATCH_NUMS),
}


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def load_data(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    if not path.exists():
        raise SystemExit(f"{path} not found: run `python training/build_emoji_dataset.py` first")
    with np.load(path) as d:
        arrays = {k: d[k] for k in ("images", "labels", "heldout", "augmented")}
    names_by_id = json.loads((path.parent / "labels.json").read_text(encoding="utf-8"))
    return arrays, [names_by_id[str(i)] for i in range(len(names_by_id))]


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------------------
# stage 1: VQVAE
# --------------------------------------------------------------------------------------------------


def quantize_for_training(
    vae: VARVQVAE, f: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual multi-scale quantization with the VQ losses (the official training forward).

    Returns the straight-through ``f_hat``, the mean VQ loss, the code hits (V,) over all scales
    and the residual vectors that were quantized (for dead-code restarts).
    """
    batch, channels, height, width = f.shape
    patch_nums = vae.v_patch_nums
    num_scales = len(patch_nums)
    codebook = vae.quantize.embedding.weight
    f_detached = f.detach()
    f_rest = f_detached
    f_hat = torch.zeros_like(f_detached)
    vq_loss = f.new_zeros(())
    hits = torch.zeros(vae.vocab_size, device=f.device)
    residuals = []
    for k, pn in enumerate(patch_nums):
        last = k == num_scales - 1
        z = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
        z_rows = z.permute(0, 2, 3, 1).reshape(-1, channels)
        with torch.no_grad():
            dist = z_rows.square().sum(1, keepdim=True) + codebook.square().sum(1)
            idx = torch.addmm(dist, z_rows, codebook.T, beta=1, alpha=-2).argmin(1)
        hits += torch.bincount(idx, minlength=vae.vocab_size).float()
        residuals.append(z_rows)
        h = vae.quantize.embedding(idx.view(batch, pn, pn)).permute(0, 3, 1, 2)
        if not last:
            h = F.interpolate(h, size=(height, width), mode="bicubic")
        h = vae.quantize.quant_resi(h.contiguous(), k, num_scales)
        f_hat = f_hat + h
        f_rest = f_rest - h.detach()
        # codebook (and phi) pulled to the encoder output; encoder committed to the quantized value
        vq_loss = vq_loss + F.mse_loss(f_hat, f_detached) + beta * F.mse_loss(f_hat.detach(), f)
    f_st = f + (f_hat - f).detach()
    return f_st, vq_loss / num_scales, hits, torch.cat(residuals)


@torch.no_grad()
def restart_dead_codes(vae: VARVQVAE, usage: torch.Tensor, residuals: torch.Tensor, generator: torch.Generator,
                       threshold: float) -> int:
    """Re-seed codes whose usage is below ``threshold`` with random residual vectors (+ noise)."""
    dead = torch.nonzero(usage < threshold).flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(0, len(residuals), (len(dead),), generator=generator)
    noise = torch.randn(len(dead), residuals.shape[1], generator=generator) * 0.01
    vae.quantize.embedding.weight[dead] = residuals[pick] + noise * residuals.std()
    usage[dead] = threshold  # give the new codes a grace period
    return len(dead)


def train_vqvae(
    images: torch.Tensor, flippable: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int,
    log_every: int,
) -> tuple[VARVQVAE, dict]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = VARVQVAE(**{**VQVAE_CONFIG, "test_mode": False}).train()
    beta = VQVAE_CONFIG["beta"]
    params = [p for n, p in vae.named_parameters() if "embedding" not in n]
    opt = torch.optim.AdamW([{"params": params, "weight_decay": 1e-4},
                             {"params": vae.quantize.embedding.parameters(), "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    usage = torch.zeros(vae.vocab_size)
    restart_until = int(steps * 0.8)
    history = []
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 50))
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x = images[idx]
        flip = flippable[idx] & (torch.rand(batch_size, generator=generator) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)

        f = vae.quant_conv(vae.encoder(x))
        f_st, vq_loss, hits, residuals = quantize_for_training(vae, f, beta)
        rec = vae.decoder(vae.post_quant_conv(f_st))
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()

        usage = usage * 0.95 + hits * 0.05
        restarted = 0
        if step % 20 == 0 and step <= restart_until:
            restarted = restart_dead_codes(vae, usage, residuals.detach(), generator, threshold=0.05)
        history.append((float(rec_loss.detach()), float(vq_loss.detach())))
        if log_every and (step % log_every == 0 or step == steps - 1):
            rec_avg, vq_avg = np.mean(history[-log_every:], axis=0)
            live = int((usage >= 0.05).sum())
            print(f"[vqvae] step {step:>5}/{steps} rec {rec_avg:.4f} vq {vq_avg:.4f} "
                  f"codes in use {live}/{vae.vocab_size} restarted {restarted} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    vae.eval().requires_grad_(False)
    rec_final, vq_final = np.mean(history[-max(1, steps // 20):], axis=0)
    return vae, {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": time.perf_counter() - start,
                 "final_rec_loss": float(rec_final), "final_vq_loss": float(vq_final)}


@torch.no_grad()
def encode_indices(vae: VARVQVAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, L) indices: the per-scale (N, pn²) maps concatenated coarse to fine."""
    out = [torch.cat(vae.encode_to_indices(images[i : i + batch_size]), dim=1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def split_scales(indices: torch.Tensor) -> list[torch.Tensor]:
    return list(indices.split([p * p for p in PATCH_NUMS], dim=1))


@torch.no_grad()
def reconstruction_report(vae: VARVQVAE, images: torch.Tensor, indices: torch.Tensor) -> dict:
    rec = vae.indices_to_image(split_scales(indices))
    mse = F.mse_loss(rec, images).item()  # in [-1, 1]
    psnr = 10 * math.log10(4.0 / mse)
    used = torch.unique(indices).numel()
    return {"mse": mse, "psnr_db": psnr, "codes_used": used}


# --------------------------------------------------------------------------------------------------
# stage 2: transformer
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def init_transformer(model: VARTransformer, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                     init_head: float = 0.02) -> None:
    """The official VAR initialisation (truncated normals, scaled residual projections and AdaLN)."""
    dim, depth = model.config.embed_dim, model.config.depth
    std = (1 / dim / 3) ** 0.5
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    nn.init.trunc_normal_(model.pos_start, std=std)
    nn.init.trunc_normal_(model.pos_1LC, std=std)
    model.head.weight.mul_(init_head)
    model.head_nm.ada_lin[-1].weight.mul_(init_adaln)
    for block in model.blocks:
        block.attn.proj.weight.div_(math.sqrt(2 * depth))
        block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
        ada = block.ada_lin[-1].weight
        ada[2 * dim :].mul_(init_adaln)
        ada[: 2 * dim].mul_(init_adaln_gamma)


@torch.no_grad()
def teacher_inputs(vae: VARVQVAE, indices: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([vae.teacher_forcing_input(split_scales(indices[i : i + batch_size]))
                      for i in range(0, len(indices), batch_size)])


@torch.no_grad()
def evaluate_transformer(model: VARTransformer, labels: torch.Tensor, inputs: torch.Tensor,
                         targets: torch.Tensor) -> dict:
    model.eval()
    logits = model.teacher_forced_logits(labels, inputs)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    acc = (logits.argmax(-1) == targets).float()
    bounds = np.cumsum([0] + [p * p for p in PATCH_NUMS])
    per_scale = [round(float(ce[:, a:b].mean()), 3) for a, b in zip(bounds[:-1], bounds[1:])]
    model.train()
    return {"ce": float(ce.mean()), "token_acc": float(acc.mean()), "ce_per_scale": per_scale}


def train_transformer(
    vae: VARVQVAE, train_idx: torch.Tensor, train_labels: torch.Tensor, test_idx: torch.Tensor,
    test_labels: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, class_dropout: float,
    log_every: int,
) -> tuple[VARTransformer, dict]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    model = VARTransformer(**TRANSFORMER_CONFIG)
    init_transformer(model)
    model.train()
    train_in, test_in = teacher_inputs(vae, train_idx), teacher_inputs(vae, test_idx)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "emb" in n or "pos_" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "emb" in n or "pos_" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    null = model.null_class
    history = []
    evals = []
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 25))
        idx = torch.randint(0, len(train_idx), (batch_size,), generator=generator)
        labels = train_labels[idx]
        dropped = torch.rand(batch_size, generator=generator) < class_dropout
        labels = torch.where(dropped, torch.full_like(labels, null), labels)
        logits = model.teacher_forced_logits(labels, train_in[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), train_idx[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        history.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            held = evaluate_transformer(model, test_labels, test_in, test_idx)
            evals.append({"step": step, "train_ce": float(np.mean(history[-log_every:])), "heldout": held})
            print(f"[var] step {step:>5}/{steps} train ce {np.mean(history[-log_every:]):.3f} "
                  f"held-out ce {held['ce']:.3f} acc {held['token_acc']:.3f} per scale {held['ce_per_scale']} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.eval().requires_grad_(False)
    train_eval = evaluate_transformer(model, train_labels[:512], train_in[:512], train_idx[:512])
    held = evaluate_transformer(model, test_labels, test_in, test_idx)
    model.eval()
    return model, {"steps": steps, "batch_size": batch_size, "lr": lr, "class_dropout": class_dropout,
                   "seconds": time.perf_counter() - start,
                   "final_train_ce_running": float(np.mean(history[-max(1, steps // 20):])),
                   "train_eval": train_eval, "heldout_eval": held, "log": evals}


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


def load_run_pipeline(run_dir: str | Path):
    """A ``VPGVARPipeline`` from ``<run_dir>/{vqvae,transformer}.safetensors`` + ``config.json``."""

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    vae = VARVQVAE(**config["vqvae"])
    vae.load_state_dict(load_file(str(run_dir / "vqvae.safetensors")))
    model = VARTransformer(**config["transformer"])
    model.load_state_dict(load_file(str(run_dir / "transformer.safetensors")))
    model.eval().requires_grad_(False)
    pipe = VPGVARPipeline(transformer=model, vae=vae, id2label=config["id2label"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_quality(pipe, test_images: np.ndarray, per_class: int, guidance_scale: float, seed: int,
                   vpg_scale: float = 1.0) -> dict:
    """Class accuracy of samples under the reference classifier and FD to the held-out images."""
    if not DEFAULT_CLASSIFIER.exists():
        return {"skipped": f"no {DEFAULT_CLASSIFIER.name}: run benchmarks/quality_metrics.py"}
    classifier = load_classifier(DEFAULT_CLASSIFIER)
    n = pipe.transformer.config.num_classes
    labels = np.repeat(np.arange(n), per_class)
    images = pipe(class_labels=list(range(n)), num_images_per_prompt=per_class, guidance_scale=guidance_scale,
                  vpg_scale=vpg_scale, top_k=0, top_p=0.95, generator=torch.Generator().manual_seed(seed),
                  output_type="np").images
    images = (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)
    fd = frechet_distance(extract_features(images, classifier), extract_features(test_images, classifier))
    return {"guidance_scale": guidance_scale, "vpg_scale": vpg_scale, "samples": len(labels),
            "classifier_accuracy": classifier_accuracy(images, labels, classifier), "fd_to_heldout": fd}


def evaluate_run(run_dir: Path, test_images: np.ndarray, per_class: int, seed: int) -> list[dict]:
    pipe = load_run_pipeline(run_dir)
    results = []
    for guidance, vpg in ((0.0, 1.0), (1.5, 1.0), (3.0, 1.0), (3.0, 1.5)):
        start = time.perf_counter()
        result = sample_quality(pipe, test_images, per_class, guidance, seed + 7, vpg_scale=vpg)
        result["seconds"] = time.perf_counter() - start
        print(f"[eval] {result}", flush=True)
        results.append(result)
    return results


@torch.no_grad()
def sample_grid(vae: VARVQVAE, model: VARTransformer, names: list[str], path: Path, seed: int,
                per_class: int = 6, guidance_scale: float = 3.0) -> np.ndarray:
    """One row per class (CFG only); returns the images as uint8 (C*per_class, 32, 32, 3)."""


    pipe = VPGVARPipeline(transformer=model, vae=vae, id2label=dict(enumerate(names)))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipe(class_labels=list(range(len(names))), num_images_per_prompt=per_class,
                  guidance_scale=guidance_scale, vpg_scale=1.0, top_k=0, top_p=0.95, generator=generator,
                  output_type="np").images
    images = (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)
    rows = images.reshape(len(names), per_class, *images.shape[1:])
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return images


@torch.no_grad()
def save_reconstructions(vae: VARVQVAE, images: torch.Tensor, indices: torch.Tensor, path: Path,
                         count: int = 32) -> None:
    """Pairs of rows: originals above their reconstructions."""

    pick = torch.linspace(0, len(images) - 1, count).long()
    rec = vae.indices_to_image(split_scales(indices[pick]))
    both = torch.stack([images[pick], rec]).add(1).mul(127.5).round().clamp(0, 255).byte()
    both = both.view(2, 4, count // 4, 3, 32, 32).permute(1, 0, 4, 2, 5, 3).reshape(8 * 32, count // 4 * 32, 3)
    Image.fromarray(both.numpy()).resize((count // 4 * 64, 8 * 64), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--name", default="emoji32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vq-steps", type=int, default=1500)
    parser.add_argument("--vq-batch", type=int, default=32)
    parser.add_argument("--vq-lr", type=float, default=2e-3)
    parser.add_argument("--var-steps", type=int, default=1000)
    parser.add_argument("--var-batch", type=int, default=64)
    parser.add_argument("--var-lr", type=float, default=2e-3)
    parser.add_argument("--class-dropout", type=float, default=0.1)
    parser.add_argument("--eval-only", action="store_true", help="evaluate an existing run and update its config")
    parser.add_argument("--reuse-vqvae", action="store_true", help="load <run>/vqvae.safetensors, train stage 2 only")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--eval-per-class", type=int, default=10,
                        help="samples per class for classifier accuracy / FD at the end (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    arrays, names = load_data(args.data)
    if len(names) != TRANSFORMER_CONFIG["num_classes"]:
        raise SystemExit(f"dataset has {len(names)} classes, the config expects {TRANSFORMER_CONFIG['num_classes']}")
    keep = ~arrays["augmented"]  # flips are done on the fly here
    images = to_model_range(arrays["images"][keep])
    labels = torch.from_numpy(arrays["labels"][keep])
    heldout = torch.from_numpy(arrays["heldout"][keep])
    flippable = ~torch.isin(labels, torch.tensor([names.index(n) for n in NO_FLIP]))
    train_x, train_y, train_flip = images[~heldout], labels[~heldout], flippable[~heldout]
    test_x, test_y = images[heldout], labels[heldout]
    out = RUNS / args.name
    out.mkdir(parents=True, exist_ok=True)
    test_u8 = arrays["images"][keep][heldout.numpy()]
    if args.eval_only:
        pipe = load_run_pipeline(out)
        sample_grid(pipe.vae, pipe.transformer, names, out / "samples.png", seed=args.seed)
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        config["evaluation"] = evaluate_run(out, test_u8, args.eval_per_class, args.seed)
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return
    print(f"{len(train_x)} train / {len(test_x)} held-out images, {len(names)} classes -> {out}")

    if args.reuse_vqvae:
        vae = VARVQVAE(**VQVAE_CONFIG)
        vae.load_state_dict(load_file(str(out / "vqvae.safetensors")))
        vq_info = json.loads((out / "config.json").read_text(encoding="utf-8"))["training"]["vqvae"]
    else:
        vae, vq_info = train_vqvae(train_x, train_flip, args.vq_steps, args.vq_batch, args.vq_lr, args.seed,
                                   args.log_every)
        save_file(vae.state_dict(), str(out / "vqvae.safetensors"))

    # stage 2 data: indices of every training image and of the mirrored flippable ones
    train_all = torch.cat([train_x, train_x[train_flip].flip(-1)])
    train_all_y = torch.cat([train_y, train_y[train_flip]])
    train_idx = encode_indices(vae, train_all)
    test_idx = encode_indices(vae, test_x)
    vq_info["train_reconstruction"] = reconstruction_report(vae, train_x, train_idx[: len(train_x)])
    vq_info["heldout_reconstruction"] = reconstruction_report(vae, test_x, test_idx)
    print(f"[vqvae] train {vq_info['train_reconstruction']} held-out {vq_info['heldout_reconstruction']}")
    save_reconstructions(vae, test_x, test_idx, out / "reconstructions.png")
    config = {
        "vqvae": VQVAE_CONFIG,
        "transformer": TRANSFORMER_CONFIG,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "training": {"seed": args.seed, "threads": args.threads, "vqvae": vq_info},
    }
    if args.var_steps == 0:
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return

    model, var_info = train_transformer(vae, train_idx, train_all_y, test_idx, test_y, args.var_steps,
                                        args.var_batch, args.var_lr, args.seed, args.class_dropout,
                                        args.log_every)
    save_file(model.state_dict(), str(out / "transformer.safetensors"))

    sample_grid(vae, model, names, out / "samples.png", seed=args.seed)
    config["training"]["transformer"] = var_info
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    if args.eval_per_class:
        config["evaluation"] = evaluate_run(out, test_u8, args.eval_per_class, args.seed)
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    print(f"VQVAE {vq_info['seconds']:.0f}s, transformer {var_info['seconds']:.0f}s; "
          f"held-out ce {var_info['heldout_eval']['ce']:.3f} -> {out}")


if __name__ == "__main__":
    main()
