"""Does VPG improve the bundled demo model's samples? Fréchet distance and class accuracy, VPG off vs on.

The feature space and the accuracy judge are the small emoji classifier of ``quality_metrics.py``
(trained on the dataset's train split; cached beside the data). For every seed, each configuration
samples one image per held-out image, with the held-out class labels (so real and generated sets have
the same class mix), all from the same generator seed; it reports

- FD: Fréchet distance in the classifier's feature space to the held-out real images (lower is better);
- accuracy: how often the classifier recognises the intended class in the generated images;

as mean ± standard deviation over seeds, and the paired difference to VPG off (same seed). Two
references bound the numbers: the classifier's held-out accuracy, and the real-vs-real FD floor
(train-split images with the held-out class mix, as many as generated, against the held-out images).

Configurations: no guidance at all; CFG only (VPG off); CFG + VPG over ``vpg_scale`` × ``vpg_corruption``
(mode ``full``, refresh ``persistent``, all scales); and each other mode and the other refresh at one
operating point. Sampling settings are the demo's (``vpg_pipelines.demo.DEMO_SETTINGS``).

    python training/build_emoji_dataset.py                     # once: training/data/emoji32.npz
    python benchmarks/quality.py --seeds 0 1 2 --out-md out/quality.md --out-png docs/images/quality.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, markdown_table, write_outputs
from benchmarks.quality_metrics import (
    DEFAULT_CLASSIFIER,
    DEFAULT_DATA,
    classifier_accuracy,
    extract_features,
    frechet_distance,
    load_emoji_dataset,
    load_or_train_classifier,
)

SWEEP_SCALES = (1.5, 2.0, 3.0, 4.0)
SWEEP_CORRUPTIONS = (0.25, 0.5)
OPERATING_POINT = {"vpg_scale": 2.0, "vpg_corruption": 0.5}  # where modes and refresh are compared
BASELINE = "cfg"


def build_configs() -> dict[str, dict[str, Any]]:
    """Name -> pipeline keyword arguments (on top of the demo settings)."""
    configs: dict[str, dict[str, Any]] = {
        "no-guidance": {"guidance_scale": 0.0, "vpg_scale": 1.0},
        BASELINE: {"vpg_scale": 1.0},
    }
    for p in SWEEP_CORRUPTIONS:
        for w in SWEEP_SCALES:
            configs[f"vpg w={w:g} p={p:g}"] = {"vpg_scale": w, "vpg_corruption": p}
    point = f"w={OPERATING_POINT['vpg_scale']:g} p={OPERATING_POINT['vpg_corruption']:g}"
    for mode in ("token", "position", "codebook"):
        configs[f"vpg {point} mode={mode}"] = {**OPERATING_POINT, "vpg_mode": mode}
    configs[f"vpg {point} refresh=resample"] = {**OPERATING_POINT, "vpg_refresh": "resample"}
    return configs


CONFIGS = build_configs()


def config_kwargs(name: str, guidance_scale: float | None) -> dict[str, Any]:
    """A configuration's pipeline arguments, with the base CFG replaced when one is given."""
    kwargs = dict(CONFIGS[name])
    if guidance_scale is not None and name != "no-guidance":
        kwargs["guidance_scale"] = guidance_scale
    return kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME",
                   help=f"subset of {list(CONFIGS)} (VPG off is always run)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="cap on images per configuration and seed (default: one per held-out image)")
    p.add_argument("--batch-size", type=int, default=512, help="images per pipeline call")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER,
                   help="cached classifier (trained on the train split and saved here if missing)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="CFG of every configuration except no-guidance (default: the demo's)")
    p.add_argument("--out-json", default=None)
    p.add_argument("--out-md", default=None)
    p.add_argument("--out-png", default=None)
    args = p.parse_args(argv)
    if BASELINE not in args.configs:
        args.configs = [BASELINE, *args.configs]
    if args.max_samples is not None and args.max_samples < 2:
        p.error("--max-samples must be >= 2 (a Fréchet distance needs two samples)")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def eval_labels(test_labels: np.ndarray, max_samples: int | None) -> np.ndarray:
    """The held-out labels, or an evenly spaced subset of them (class mix kept roughly) when capped."""
    order = np.argsort(test_labels, kind="stable")
    if max_samples is None or max_samples >= len(order):
        return test_labels[order]
    pick = np.linspace(0, len(order) - 1, max_samples).round().astype(int)
    return test_labels[order[pick]]


def real_subset(images: np.ndarray, labels: np.ndarray, wanted: np.ndarray, seed: int) -> np.ndarray:
    """Images drawn without replacement from (images, labels) with the class counts of ``wanted``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in zip(*np.unique(wanted, return_counts=True)):
        pool = np.flatnonzero(labels == c)
        rows.append(rng.choice(pool, size=n, replace=len(pool) < n))
    return images[np.concatenate(rows)]


def generate(pipe, labels: np.ndarray, kwargs: dict[str, Any], seed: int, batch_size: int) -> np.ndarray:
    from vpg_pipelines.demo import DEMO_SETTINGS

    settings = {**DEMO_SETTINGS, **kwargs}
    generator = torch.Generator(pipe.device).manual_seed(seed)
    chunks = [pipe(class_labels=labels[i : i + batch_size].tolist(), generator=generator, output_type="np",
                   **settings).images for i in range(0, len(labels), batch_size)]
    return (np.concatenate(chunks) * 255).round().astype(np.uint8)


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": mean(values), "sd": stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vpg_pipelines import load_demo_pipeline

    data = load_emoji_dataset(args.data)
    classifier = load_or_train_classifier(args.data, args.classifier)
    x_test, y_test = data.test
    labels = eval_labels(y_test, args.max_samples)
    real_feats = extract_features(x_test, classifier)
    train_images, train_labels = data.images[~data.heldout & ~data.augmented], data.labels[~data.heldout &
                                                                                             ~data.augmented]
    pipe = load_demo_pipeline(args.device)
    pipe.set_progress_bar_config(disable=True)

    floor = [frechet_distance(extract_features(real_subset(train_images, train_labels, labels, s), classifier),
                              real_feats) for s in args.seeds]
    results: dict[str, dict[str, list[float]]] = {name: {"fd": [], "accuracy": [], "seconds": []}
                                                  for name in args.configs}
    for seed in args.seeds:
        for name in args.configs:
            start = time.perf_counter()
            images = generate(pipe, labels, config_kwargs(name, args.guidance_scale), seed, args.batch_size)
            seconds = time.perf_counter() - start
            fd = frechet_distance(extract_features(images, classifier), real_feats)
            acc = classifier_accuracy(images, labels, classifier)
            for key, value in (("fd", fd), ("accuracy", acc), ("seconds", seconds)):
                results[name][key].append(value)
            print(f"seed {seed} {name:<32} FD {fd:7.3f}  accuracy {acc:.3f}  ({seconds:.0f} s)", flush=True)

    base = results[BASELINE]
    configs = {}
    for name, r in results.items():
        configs[name] = {
            "kwargs": config_kwargs(name, args.guidance_scale),
            **r,
            "fd_summary": summary(r["fd"]),
            "accuracy_summary": summary(r["accuracy"]),
            "fd_delta": summary([a - b for a, b in zip(r["fd"], base["fd"])]),
            "accuracy_delta": summary([a - b for a, b in zip(r["accuracy"], base["accuracy"])]),
        }
    return {
        "benchmark": "quality",
        "model": "bundled demo model (vpg_pipelines.load_demo_pipeline())",
        "machine": machine_info(args.device),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "samples_per_seed": len(labels),
        "heldout_images": len(y_test),
        "heldout_accuracy": classifier_accuracy(x_test, y_test, classifier),
        "real_fd_floor": floor,
        "real_fd_floor_summary": summary(floor),
        "configs": configs,
    }


# -- reporting -------------------------------------------------------------------------------------
def pm(s: dict[str, float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(s['mean'])} ± {fmt.format(s['sd'])}"


def signed(s: dict[str, float], fmt: str = "{:+.2f}") -> str:
    """Mean ± sd of a paired difference, bold when every seed moved the same way."""
    text = f"{fmt.format(s['mean'])} ± {fmt.format(s['sd']).lstrip('+')}"
    same_sign = s["min"] > 0 or s["max"] < 0
    return f"**{text}**" if same_sign else text


def to_markdown(result: dict[str, Any]) -> str:
    from vpg_pipelines.demo import DEMO_SETTINGS

    a, m = result["args"], result["machine"]
    n_seeds = len(a["seeds"])
    settings = dict(DEMO_SETTINGS)
    if a.get("guidance_scale") is not None:
        settings["guidance_scale"] = a["guidance_scale"]
    head = (f"**{result['model']}**; {result['samples_per_seed']} generated images per configuration and seed "
            f"(the held-out class mix), seeds {a['seeds']}; settings {settings} (VPG off = "
            f"`vpg_scale=1`); {m['date']}; {m['cpu']}, torch {m['torch']}, {m['torch_threads']} thread(s).")
    refs = (f"References: classifier accuracy on the {result['heldout_images']} held-out real images "
            f"**{result['heldout_accuracy']:.3f}**; real-vs-real FD floor (train-split images with the same class "
            f"mix and count vs held-out, over the same seeds) **{pm(result['real_fd_floor_summary'])}**.")
    header = ["configuration", "FD to held-out ↓", "Δ FD vs VPG off", "class accuracy ↑", "Δ accuracy vs VPG off",
              "s / run"]
    rows = []
    for name, c in result["configs"].items():
        is_base = name == BASELINE
        rows.append([
            "CFG only (VPG off)" if is_base else f"`{name}`",
            pm(c["fd_summary"]),
            "—" if is_base else signed(c["fd_delta"]),
            pm(c["accuracy_summary"], "{:.3f}"),
            "—" if is_base else signed(c["accuracy_delta"], "{:+.3f}"),
            f"{mean(c['seconds']):.0f}",
        ])
    notes = (f"Mean ± standard deviation over {n_seeds} seeds; Δ columns are paired per seed (same generator "
             "seed as VPG off) and in **bold** where every seed moved the same way. Unlisted VPG settings are "
             "the defaults: mode `full`, refresh `persistent`, all scales.")
    return "\n".join([head, "", refs, "", markdown_table(header, rows), "", notes])


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = result["configs"]
    base = configs[BASELINE]
    floor = result["real_fd_floor_summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, label in ((axes[0], "fd", "FD to held-out (lower is better)"),
                           (axes[1], "accuracy", "classifier accuracy on samples (higher is better)")):
        b = base[f"{key}_summary"]
        ax.axhspan(b["mean"] - b["sd"], b["mean"] + b["sd"], color="0.85")
        ax.axhline(b["mean"], color="0.3", lw=1, label="VPG off (CFG only) ± sd")
        if "no-guidance" in configs:
            ax.axhline(configs["no-guidance"][f"{key}_summary"]["mean"], color="0.5", ls=":", label="no guidance")
        if key == "fd":
            ax.axhline(floor["mean"], color="tab:green", ls="--", label="real-vs-real floor")
        else:
            ax.axhline(result["heldout_accuracy"], color="tab:green", ls="--", label="held-out real images")
        for p, color in zip(SWEEP_CORRUPTIONS, ("tab:blue", "tab:orange")):
            points = [(w, configs[f"vpg w={w:g} p={p:g}"][f"{key}_summary"]) for w in SWEEP_SCALES
                      if f"vpg w={w:g} p={p:g}" in configs]
            if points:
                xs = [1.0] + [w for w, _ in points]
                ys = [b] + [s for _, s in points]
                ax.errorbar(xs, [s["mean"] for s in ys], yerr=[s["sd"] for s in ys], marker="o", capsize=3,
                            color=color, label=f"VPG corruption p={p:g}")
        ax.set_xlabel("vpg_scale w (1 = off)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    ax = axes[2]
    names = [n for n in configs if n.startswith(f"vpg w={OPERATING_POINT['vpg_scale']:g} "
                                                f"p={OPERATING_POINT['vpg_corruption']:g}")]
    if names:
        deltas = [configs[n]["fd_delta"] for n in names]
        short = [n.split(" ", 3)[3] if n.count(" ") >= 3 else "mode=full, persistent" for n in names]
        ax.barh(range(len(names)), [d["mean"] for d in deltas], xerr=[d["sd"] for d in deltas], color="tab:purple",
                capsize=3)
        ax.set_yticks(range(len(names)), short, fontsize=8)
        ax.axvline(0, color="0.3", lw=1)
        ax.invert_yaxis()
    ax.set_xlabel("Δ FD vs VPG off (negative = better)")
    ax.set_title(f"modes and refresh at w={OPERATING_POINT['vpg_scale']:g}, p={OPERATING_POINT['vpg_corruption']:g}",
                 fontsize=10)
    fig.suptitle(f"Bundled demo model: VPG off vs on ({len(result['args']['seeds'])} seeds × "
                 f"{result['samples_per_seed']} images, mean ± sd)", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    markdown = to_markdown(result)
    result["markdown"] = markdown
    write_outputs(result, markdown, args.out_json, args.out_md)
    if args.out_png:
        plot(result, args.out_png)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
