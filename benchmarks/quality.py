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

Configurations (``--suite vpg``, the default): no guidance at all; CFG only (VPG off); CFG + VPG over
``vpg_scale`` × ``vpg_corruption`` (mode ``full``, refresh ``persistent``, all scales); and each other
mode and the other refresh at one operating point. ``--suite guidance`` (issue 14): the baseline tuned
over temperature / top-p, SSG, IGG and the entropy-aware temperature each over a grid of the same size,
and each stacked with VPG (see ``GUIDANCE_FAMILIES``). Sampling settings are the demo's
(``vpg_pipelines.demo.DEMO_SETTINGS``). ``--resume`` continues a run from its ``<out-json>.partial``.

    python training/build_emoji_dataset.py                     # once: training/data/emoji32.npz
    python benchmarks/quality.py --seeds 0 1 2 --out-md out/quality.md --out-png docs/images/quality.png
"""

from __future__ import annotations

import argparse
import json
import os
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
from vpg_pipelines import load_demo_pipeline
from vpg_pipelines.demo import DEMO_SETTINGS
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature

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

VPG_STACK = {"vpg_scale": 1.5, "vpg_corruption": 0.5}
"""The VPG setting the other terms are stacked with (the demo's w, the default p)."""
GUIDANCE_FAMILIES: dict[str, dict[str, dict[str, Any]]] = {
    # the baseline's own knobs, tuned over as many settings as each term gets (4): a fair baseline.
    # ``temperature`` is a constant temperature (the entropy term with T0 = 0, theta = 1).
    "baseline": {BASELINE: {"vpg_scale": 1.0}, "T=0.8": {"vpg_scale": 1.0, "temperature": 0.8},
                 "T=0.9": {"vpg_scale": 1.0, "temperature": 0.9}, "top-p=1": {"vpg_scale": 1.0, "top_p": 1.0}},
    "ssg": {f"ssg {b:g}": {"vpg_scale": 1.0, "ssg_scale": b} for b in (0.1, 0.25, 0.5, 1.0)},
    "igg": {f"igg {w:g}": {"vpg_scale": 1.0, "igg_scale": w} for w in (0.0, 0.5, 1.0, 2.0)},
    "entropy-T": {
        "entropy-T paper": {"vpg_scale": 1.0, "entropy_temperature": True},
        "entropy-T base=0.8": {"vpg_scale": 1.0, "entropy_temperature": True, "entropy_base": 0.8},
        "entropy-T base=0.6": {"vpg_scale": 1.0, "entropy_temperature": True, "entropy_base": 0.6},
        "entropy-T alpha=1.7": {"vpg_scale": 1.0, "entropy_temperature": True, "entropy_temperature_alpha": 1.7},
    },
    "stacked": {"vpg": dict(VPG_STACK), "vpg + ssg 0.5": {**VPG_STACK, "ssg_scale": 0.5},
                "vpg + igg 1": {**VPG_STACK, "igg_scale": 1.0},
                "vpg + entropy-T paper": {**VPG_STACK, "entropy_temperature": True}},
    # chosen after the first CFG 3.0 run: each family's best point there, stacked with VPG (a follow-up,
    # not part of the grid fixed beforehand; run with --configs)
    "stacked-best": {"vpg + T=0.8": {**VPG_STACK, "temperature": 0.8}, "vpg + ssg 0.1": {**VPG_STACK, "ssg_scale": 0.1},
                     "vpg + igg 0": {**VPG_STACK, "igg_scale": 0.0},
                     "vpg + entropy-T base=0.6": {**VPG_STACK, "entropy_temperature": True, "entropy_base": 0.6}},
}
GUIDANCE_CONFIGS = {name: kw for family in GUIDANCE_FAMILIES.values() for name, kw in family.items()}
SUITES = {"vpg": CONFIGS, "guidance": {n: kw for n, kw in GUIDANCE_CONFIGS.items()
                                       if n not in GUIDANCE_FAMILIES["stacked-best"]}}
ALL_CONFIGS = {**CONFIGS, **GUIDANCE_CONFIGS}


def family_of(name: str) -> str | None:
    return next((f for f, members in GUIDANCE_FAMILIES.items() if name in members), None)


def config_kwargs(name: str, guidance_scale: float | None) -> dict[str, Any]:
    """A configuration's pipeline arguments, with the base CFG replaced when one is given."""
    kwargs = dict(ALL_CONFIGS[name])
    if guidance_scale is not None and name != "no-guidance":
        kwargs["guidance_scale"] = guidance_scale
    return kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--suite", choices=list(SUITES), default="vpg",
                   help="vpg: the VPG sweep (issue 5); guidance: SSG / IGG / entropy temperature vs a tuned baseline")
    p.add_argument("--configs", nargs="+", default=None, choices=list(ALL_CONFIGS), metavar="NAME",
                   help=f"subset of the suite's configurations, from {list(ALL_CONFIGS)} (VPG off is always run)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the (configuration, seed) results saved in <out-json>.partial by an interrupted run")
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
    if args.configs is None:
        args.configs = list(SUITES[args.suite])
    if args.resume and not args.out_json:
        p.error("--resume needs --out-json (the partial results live beside it)")
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

    settings = pipeline_settings({**DEMO_SETTINGS, **kwargs})
    generator = torch.Generator(pipe.device).manual_seed(seed)
    chunks = [pipe(class_labels=labels[i : i + batch_size].tolist(), generator=generator, output_type="np",
                   **settings).images for i in range(0, len(labels), batch_size)]
    return (np.concatenate(chunks) * 255).round().astype(np.uint8)


def pipeline_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Pipeline arguments from a configuration: ``temperature`` (a constant temperature) and ``entropy_base``
    (the entropy term's ``T_base``) have no pipeline argument and become a ``guiders`` entry."""

    settings = dict(settings)
    temperature, base = settings.pop("temperature", None), settings.pop("entropy_base", None)
    if temperature is not None:
        settings["guiders"] = [EntropyAwareTemperature(base=temperature, t0=0.0, theta=1.0)]
    elif base is not None:
        settings.pop("entropy_temperature", None)
        constants = {k: settings.pop(f"entropy_temperature_{k}") for k in ("t0", "alpha", "theta")
                     if f"entropy_temperature_{k}" in settings}
        settings["guiders"] = [EntropyAwareTemperature(base=base, **constants)]
    return settings


RESUME_KEYS = ("guidance_scale", "max_samples", "data", "classifier", "device")


def load_partial(path: Path | None, args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """(configuration|seed) -> (FD, accuracy, seconds) of an interrupted run with the same settings."""
    if path is None or not path.exists():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    mine = {k: str(getattr(args, k)) for k in RESUME_KEYS}
    if saved.get("settings") != mine:
        raise SystemExit(f"--resume: {path} was made with {saved.get('settings')}, this run has {mine}; "
                         "remove it or match the settings")
    return {k: tuple(v) for k, v in saved["done"].items()}


def save_partial(path: Path | None, args: argparse.Namespace, done: dict) -> None:
    """Write the finished (configuration, seed) results atomically (a crash never leaves half a file)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": {k: str(getattr(args, k)) for k in RESUME_KEYS},
                               "done": {k: list(v) for k, v in done.items()}}), encoding="utf-8")
    os.replace(tmp, path)


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": mean(values), "sd": stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:

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
    partial_path = Path(f"{args.out_json}.partial") if args.out_json else None
    done = load_partial(partial_path, args) if args.resume else {}
    for seed in args.seeds:
        for name in args.configs:
            key = f"{name}|{seed}"
            if key in done:
                fd, acc, seconds = done[key]
            else:
                start = time.perf_counter()
                images = generate(pipe, labels, config_kwargs(name, args.guidance_scale), seed, args.batch_size)
                seconds = time.perf_counter() - start
                fd = frechet_distance(extract_features(images, classifier), real_feats)
                acc = classifier_accuracy(images, labels, classifier)
                done[key] = (fd, acc, seconds)
                save_partial(partial_path, args, done)
            for metric, value in (("fd", fd), ("accuracy", acc), ("seconds", seconds)):
                results[name][metric].append(value)
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
    parts = [head, "", refs, "", markdown_table(header, rows), "", notes]
    if a.get("suite") == "guidance":
        parts += ["", fair_table(result)]
    return "\n".join(parts)


def paired(configs: dict, a: str, b: str, key: str) -> dict[str, float]:
    """Per-seed differences ``a - b`` of metric ``key``."""
    return summary([x - y for x, y in zip(configs[a][key], configs[b][key])])


def best_of(configs: dict, family: str) -> str | None:
    """The family member with the lowest mean FD (the tuned setting)."""
    members = [n for n in GUIDANCE_FAMILIES[family] if n in configs]
    return min(members, key=lambda n: configs[n]["fd_summary"]["mean"]) if members else None


def fair_table(result: dict[str, Any]) -> str:
    """Each term at its best grid point vs the baseline at its best (temperature / top-p) grid point, and
    the stacks vs VPG alone; Δ paired per seed."""
    configs = result["configs"]
    base = best_of(configs, "baseline")
    header = ["family", "grid", "best setting", "FD ↓", "Δ FD vs best baseline", "accuracy ↑", "Δ accuracy"]
    rows = []
    for family in ("baseline", "ssg", "igg", "entropy-T"):
        best = best_of(configs, family)
        if best is None:
            continue
        c = configs[best]
        size = sum(n in configs for n in GUIDANCE_FAMILIES[family])
        same = best == base
        rows.append([family, f"{size} settings", f"`{best}`", pm(c["fd_summary"]),
                     "—" if same else signed(paired(configs, best, base, "fd")),
                     pm(c["accuracy_summary"], "{:.3f}"),
                     "—" if same else signed(paired(configs, best, base, "accuracy"), "{:+.3f}")])
    lines = [f"**Fair comparison** (each family tuned over its grid by mean FD; baseline = `{base}`):", "",
             markdown_table(header, rows)]
    if "vpg" in configs:
        header = ["stack", "FD ↓", "Δ FD vs VPG alone", "accuracy ↑", "Δ accuracy vs VPG alone"]
        rows = [[f"`{n}`", pm(configs[n]["fd_summary"]), "—" if n == "vpg" else signed(paired(configs, n, "vpg", "fd")),
                 pm(configs[n]["accuracy_summary"], "{:.3f}"),
                 "—" if n == "vpg" else signed(paired(configs, n, "vpg", "accuracy"), "{:+.3f}")]
                for n in (*GUIDANCE_FAMILIES["stacked"], *GUIDANCE_FAMILIES["stacked-best"]) if n in configs]
        lines += ["", f"**Stacked with VPG** (w={VPG_STACK['vpg_scale']:g}, p={VPG_STACK['vpg_corruption']:g}):", "",
                  markdown_table(header, rows)]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    if result["args"].get("suite") == "guidance":
        plot_guidance(result, path)
        return
    import matplotlib  # optional (the `eval` extra): only the plots need it

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


def plot_guidance(result: dict[str, Any], path: str | Path) -> None:
    """FD and accuracy of every configuration of the guidance suite, grouped by family, against the best
    baseline's band."""
    import matplotlib  # optional (the `eval` extra): only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = result["configs"]
    base = best_of(configs, "baseline")
    families = [f for f in GUIDANCE_FAMILIES if any(n in configs for n in GUIDANCE_FAMILIES[f])]
    colors = dict(zip(GUIDANCE_FAMILIES, ("0.4", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red")))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    for ax, key, label in ((axes[0], "fd", "FD to held-out (lower is better)"),
                           (axes[1], "accuracy", "classifier accuracy (higher is better)")):
        b = configs[base][f"{key}_summary"]
        ax.axhspan(b["mean"] - b["sd"], b["mean"] + b["sd"], color="0.88")
        ax.axhline(b["mean"], color="0.3", lw=1, label=f"best baseline ({base}) ± sd")
        x, ticks, names = 0, [], []
        for family in families:
            for name in (n for n in GUIDANCE_FAMILIES[family] if n in configs):
                s = configs[name][f"{key}_summary"]
                ax.errorbar(x, s["mean"], yerr=s["sd"], marker="o", capsize=3, color=colors[family])
                ticks.append(x)
                names.append(name)
                x += 1
            x += 0.6
        ax.set_xticks(ticks, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    cfg = result["args"].get("guidance_scale")
    fig.suptitle(f"Bundled demo model, CFG {cfg if cfg is not None else 'demo (3.0)'}: guidance terms vs a tuned "
                 f"baseline ({len(result['args']['seeds'])} seeds × {result['samples_per_seed']} images, mean ± sd)",
                 fontsize=11)
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
    write_outputs(result, markdown, args.out_json, args.out_md)
    if args.out_png:
        plot(result, args.out_png)
    print(markdown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
