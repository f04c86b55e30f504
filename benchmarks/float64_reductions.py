"""Float32 instead of float64 in APG's projection and SSG's DCT prior: how far the outputs move, measured on the
parity fixtures (issue 21: devices without float64).

The package computes both in float64 as the official sampler does (APG) — on the device where it has float64,
on the CPU where it has none (``vpg_pipelines.devices.compute_in_float64``). This script measures what the
other option, plain float32 on the device, would change, so ``docs/usage.md`` ("Devices") can state it:

* **APG** (InfinityStar's default guidance, cfg 34): the fixture's forced-code replay (all 61 steps), guided
  logits of the float32 projection vs the float64 one and vs the official sampler's; the largest change of a
  bit's probability; and an unforced run (multinomial draws, same seed): do the drawn bits stay the same?
* **SSG** (beta 0.5 and 2.0): greedy VAR (parity model, top-k 1) and greedy Infinity (plain fixture, top-k 1)
  with the DCT prior in float32 vs float64: guided logits and the codes.

    python benchmarks/float64_reductions.py [--out-json f.json] [--out-md f.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table, write_outputs  # noqa: E402
from vpg_pipelines import VPGInfinityPipeline, VPGVARPipeline
from vpg_pipelines.guidance import apg, ssg  # noqa: E402
from vpg_pipelines.loading.infinity import load_official_infinity
from vpg_pipelines.loading.infinity_star import load_infinity_star_transformer, load_infinity_star_vae
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.models.infinity.transformer import pad_text
from vpg_pipelines.models.infinity_star.adapter import InfinityStarAdapter
from vpg_pipelines.models.infinity_star.schedules import plan_steps
from vpg_pipelines.sampling.next_scale import SamplerTrace, run_next_scale

SHARED = Path(os.environ.get("VPG_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "parity"
STAR_PLAN = {"image_repetition": [3] * 11, "video_repetition": [3] * 8 + [2, 1, 1], "semantic_scales": 8,
             "detail_scale_min_tokens": 100, "tau_image": 1.0, "tau_video": 0.4}


@contextlib.contextmanager
def float32_reductions() -> Iterator[None]:
    """APG's projection and SSG's DSE in the logits' own float32 (on the tensors' device) while inside."""
    project, dse = apg._project, ssg.discrete_spatial_enhancement

    def dse32(previous, new_grid, interpolation="linear"):
        return ssg.enhance(previous.float(), tuple(int(g) for g in new_grid), interpolation).to(previous.dtype)

    apg._project, ssg.discrete_spatial_enhancement = apg.project, dse32
    try:
        yield
    finally:
        apg._project, ssg.discrete_spatial_enhancement = project, dse


def _bit_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().reshape(*logits.shape[:-1], -1, 2).softmax(-1)[..., 1]


def measure_apg() -> dict:

    root = SHARED / "infinity_star"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    transformer = load_infinity_star_transformer(root / "infinity_star.safetensors", text_maxlen=config["text_maxlen"])
    vae = load_infinity_star_vae(root / "videovae.safetensors", detail_scale_min_tokens=100)
    adapter = InfinityStarAdapter(transformer, vae)
    plan = plan_steps(config["scale_schedule"], STAR_PLAN["image_repetition"], STAR_PLAN["video_repetition"],
                      semantic_scales=8, detail_scale_min_tokens=100, tau_image=1.0, tau_video=0.4)
    cases = load_file(str(root / "cases.safetensors"))
    steps = json.loads((root / "cases.json").read_text(encoding="utf-8"))["steps"]
    cfg = apg.AdaptiveProjectedGuidance(34.0, norm_threshold=0.05, eta=0.0)

    def run(forced: bool) -> SamplerTrace:
        bits = [cases[f"forced_bits.step{i}"] for i in range(steps)] if forced else None
        state = adapter.prepare(plan, [cases["text.features"]], [cases["negative_text.features"]], with_null=True,
                                forced_bits=bits)
        trace = SamplerTrace()
        with torch.no_grad():
            run_next_scale(adapter, state, cfg=cfg, trace=trace, generator=torch.Generator().manual_seed(0))
        return trace

    f64, free64 = run(True), run(False)
    with float32_reductions():
        f32, free32 = run(True), run(False)
    rows = {"logits_f32_vs_f64": 0.0, "official_vs_f64": 0.0, "official_vs_f32": 0.0, "bit_prob_f32_vs_f64": 0.0}
    for i in range(steps):
        expected = cases[f"guided_logits.step{i}"]
        rows["logits_f32_vs_f64"] = max(rows["logits_f32_vs_f64"], (f32.guided[i] - f64.guided[i]).abs().max().item())
        rows["official_vs_f64"] = max(rows["official_vs_f64"], (f64.guided[i] - expected).abs().max().item())
        rows["official_vs_f32"] = max(rows["official_vs_f32"], (f32.guided[i] - expected).abs().max().item())
        change = (_bit_probs(f32.guided[i]) - _bit_probs(f64.guided[i])).abs().max().item()
        rows["bit_prob_f32_vs_f64"] = max(rows["bit_prob_f32_vs_f64"], change)
    total = sum(free64.codes[i].numel() for i in range(steps))
    first = next((i for i in range(steps) if not torch.equal(free32.codes[i], free64.codes[i])), None)
    rows.update(steps=steps, drawn_bits=total, unforced_first_differing_step=first,
                unforced_identical=first is None)
    return rows


def _ssg_runs(pipe, kw: dict, beta: float) -> dict:

    traces = {}
    for name, context in (("f64", contextlib.nullcontext()), ("f32", float32_reductions())):
        trace = SamplerTrace()
        with context, torch.no_grad():
            pipe(**kw, ssg_scale=beta, generator=torch.Generator().manual_seed(0), output_type="latent", trace=trace)
        traces[name] = trace
    f64, f32 = traces["f64"], traces["f32"]
    steps = sorted(f64.guided)
    same = all(torch.equal(f64.codes[i], f32.codes[i]) for i in steps)
    diff = max((f32.guided[i] - f64.guided[i]).abs().max().item() for i in steps)
    scale = max(f64.guided[i].abs().max().item() for i in steps)
    return {"beta": beta, "logits_f32_vs_f64": diff, "largest_logit": scale, "codes_identical": same,
            "steps": len(steps)}


def measure_ssg() -> list[dict]:

    results = []
    root = SHARED / "var"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    var = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config)
    var.set_progress_bar_config(disable=True)
    for beta in (0.5, 2.0):
        kw = dict(class_labels=[0, 3, 6, 9], guidance_scale=3.0, top_k=1, top_p=0.0, vpg_scale=1.0)
        results.append({"model": "VAR (parity, greedy)", **_ssg_runs(var, kw, beta)})
    root = SHARED / "infinity"
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    transformer, vae = load_official_infinity(root / "infinity.safetensors", root / "vae.safetensors", config=config)
    cases = load_file(str(root / "cases.safetensors"))
    height, width = schedule_from_template(config["h_div_w_template"], config["pn"]).image_size
    pipe = VPGInfinityPipeline(transformer, vae, None, None, default_height=height, default_width=width)
    pipe.set_progress_bar_config(disable=True)
    embeds, mask = pad_text(cases["text.features"], cases["text.lens"])
    for beta in (0.5, 2.0):
        kw = dict(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1].long(), guidance_scale=3.0, top_k=1,
                  top_p=0.0, vpg_scale=1.0)
        results.append({"model": "Infinity (parity, greedy)", **_ssg_runs(pipe, kw, beta)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"apg": measure_apg(), "ssg": measure_ssg(), "torch": torch.__version__}
    a = result["apg"]
    lines = ["APG (InfinityStar parity fixture, cfg 34, forced-code replay of all steps):",
             markdown_table(["guided logits", "max abs"], [
                 ["float32 vs float64 projection", f"{a['logits_f32_vs_f64']:.2e}"],
                 ["official sampler vs float64 (ours)", f"{a['official_vs_f64']:.2e}"],
                 ["official sampler vs float32", f"{a['official_vs_f32']:.2e}"],
                 ["a bit's probability, float32 vs float64", f"{a['bit_prob_f32_vs_f64']:.2e}"]]),
             f"Unforced run, same seed ({a['drawn_bits']} bits drawn): "
             + ("identical bits" if a["unforced_identical"] else
                f"first different draw at step {a['unforced_first_differing_step']}"),
             "", "SSG (DCT prior), float32 vs float64:",
             markdown_table(["model", "beta", "guided logits max abs", "largest |logit|", "codes"], [
                 [r["model"], f"{r['beta']:g}", f"{r['logits_f32_vs_f64']:.2e}", f"{r['largest_logit']:.1f}",
                  "identical" if r["codes_identical"] else "differ"] for r in result["ssg"]])]
    markdown = "\n".join(lines)
    print(markdown)
    write_outputs(result, markdown, args.out_json, args.out_md)


if __name__ == "__main__":
    main()
