"""``vpg eval sweep``: imagenet sampling over a grid of w (``--vpg-scale``) x p (``--vpg-corruption``) through the
sharded sampler, a metric per setting, a table and the paper's Fig. 4-style plot (metric vs w, one line per p).

Each setting is its own resumable run folder under ``--out`` (``off`` for w = 1, shared by every p since
VPG is then off whatever p is; ``w2-p0.5`` ...). All settings use the same seeds, so sample i differs only
by the guidance. The metric is computed on the main process once all settings are sampled:

- ``--classifier``: the demo model's classifier-space FD and class accuracy (``benchmarks/quality.py``'s
  metrics: ``frechet_distance`` on ``extract_features``, ``classifier_accuracy``);
- ``--inception-weights``: FID and Inception Score (``fid.py``).

Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .fid import features_of, fid_is
from .frechet import frechet_distance
from .image_sets import ImageSet
from .runs import feature_net, load_for, make_spec, make_state
from .sampler import sample_run

OFF = "off"


def sweep_settings(strengths: list[float], corruptions: list[float]) -> list[tuple[str, float, float]]:
    """(folder name, w, p): VPG off once, then every w != 1 for each p."""
    for flag, values, low in (("--vpg-scale", strengths, 0.0), ("--vpg-corruption", corruptions, 0.0)):
        if any(not np.isfinite(v) or v < low for v in values) or len(set(values)) != len(values):
            raise ValueError(f"{flag} takes distinct finite values >= {low:g}, got {values}")
    if any(p > 1 for p in corruptions):
        raise ValueError(f"--vpg-corruption values must be in [0, 1], got {corruptions}")
    settings = [(OFF, 1.0, corruptions[0])]
    settings += [(f"w{w:g}-p{p:g}", w, p) for p in corruptions for w in strengths if w != 1.0]
    return settings


def _files(spec) -> list[Path]:
    return [spec.out / spec.protocol.file_name(s) for s in spec.protocol.samples()]


def run_sweep(args: argparse.Namespace) -> dict[str, Any] | None:
    """Sample every setting (all processes), then measure, tabulate and plot (main process)."""
    settings = sweep_settings(list(args.vpg_scale), list(args.vpg_corruption))
    reference = ImageSet(args.reference, "--reference")  # checked before hours of sampling
    state = make_state(args.cpu)
    pipe, dtype_name = load_for("imagenet", args, state)
    out = Path(args.out)
    specs = {}
    for name, w, p in settings:
        specs[name] = make_spec("imagenet", args, pipe, dtype_name, out=out / name,
                                overrides={"vpg_scale": w, "vpg_corruption": p})
        specs[name].check()
    if state.is_main_process:
        feature_net(args, "cpu")  # a missing weights file fails now, not after the sampling
    seconds = {name: sample_run(spec, pipe, state)["seconds"] for name, spec in specs.items()}
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    device = state.device  # the accelerator of this process (or the CPU); the metrics' float64 stays on the host
    net, space = feature_net(args, device)
    result = measure(specs, settings, reference, net, space, args.metric_batch_size)
    result.update({"reference": str(reference.path), "model": specs[OFF].model, "seconds_sampling_now": seconds,
                   "settings": {n: s.identity() for n, s in specs.items()}})
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "sweep.md").write_text(to_markdown(result) + "\n", encoding="utf-8")
    plot(result, out / "sweep.png")
    print(to_markdown(result))
    print(f"wrote {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    return result


def measure(specs: dict, settings: list[tuple[str, float, float]], reference, net, space: str,
            batch_size: int) -> dict[str, Any]:
    """One row per setting: FD (or FID) and class accuracy (or Inception Score)."""
    size = ImageSet.from_files(_files(specs[OFF])[:1]).size
    ref_features, _ = features_of(reference, net, batch_size, size)
    rows = []
    for name, w, p in settings:
        spec = specs[name]
        images = ImageSet.from_files(_files(spec), f"{spec.out}")
        features, logits = features_of(images, net, batch_size, size)
        row: dict[str, Any] = {"name": name, "w": w, "p": None if name == OFF else p, "samples": len(images)}
        if space == "classifier":
            labels = np.array([s.condition for s in spec.protocol.samples()])
            row["fd"] = frechet_distance(features, ref_features)
            row["accuracy"] = float((logits.argmax(1).numpy() == labels).mean())
        else:
            scores = fid_is(features, logits, ref_features)
            row["fd"], row["inception_score"] = scores["fid"], scores["inception_score"]
        rows.append(row)
    base = rows[0]["fd"]
    for row in rows:
        row["fd_delta"] = row["fd"] - base
    return {"feature_space": space, "reference_images": len(reference), "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    classifier = result["feature_space"] == "classifier"
    fd, second = ("FD (classifier) ↓", "class accuracy ↑") if classifier else ("FID ↓", "Inception Score ↑")
    key = "accuracy" if classifier else "inception_score"
    lines = [f"| setting | w | p | {fd} | Δ vs VPG off | {second} | samples |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        p = "—" if r["p"] is None else f"{r['p']:g}"
        delta = "—" if r["name"] == OFF else f"{r['fd_delta']:+.3f}"
        lines.append(f"| {'VPG off' if r['name'] == OFF else r['name']} | {r['w']:g} | {p} | {r['fd']:.3f} | "
                     f"{delta} | {r[key]:.3f} | {r['samples']} |")
    lines.append("")
    lines.append(f"Reference: {result['reference']} ({result['reference_images']} images); same seeds in every "
                 f"setting; model {result['model']}.")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Metric vs w, one line per p, every line starting at the VPG-off point (w = 1)."""
    import matplotlib  # optional (the `eval` extra), and heavy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classifier = result["feature_space"] == "classifier"
    panels = [("fd", "FD in classifier space (lower is better)" if classifier else "FID (lower is better)"),
              ("accuracy" if classifier else "inception_score",
               "class accuracy (higher is better)" if classifier else "Inception Score (higher is better)")]
    rows = result["rows"]
    off = rows[0]
    corruptions = sorted({r["p"] for r in rows[1:]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(axes, panels):
        ax.axhline(off[key], color="0.5", lw=1, ls=":", label="VPG off (w = 1)")
        for p in corruptions:
            points = sorted([(1.0, off[key])] + [(r["w"], r[key]) for r in rows[1:] if r["p"] == p])
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=f"p = {p:g}")
        ax.set_xlabel("vpg_scale w")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"VPG sweep: {off['samples']} samples per setting", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
