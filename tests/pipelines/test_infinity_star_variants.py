"""InfinityStar's released variants (720p, 480p, Interact): the official scripts' settings, the 480p schedules
against the official ones (``tests/fixtures/infinity_star_480p/schedule_480p.json``), the lengths each script
accepts, and the loaders' ``variant=`` / name detection."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.shared import REPO, shared_path
from vpg_pipelines import VPGInfinityStarPipeline
from vpg_pipelines.loading.auto import SourceError, load_official, load_pipeline, released_pipeline
from vpg_pipelines.models.infinity_star.schedules import get_dynamic_resolution_meta
from vpg_pipelines.models.infinity_star.settings import (
    VARIANT_ARGS,
    allowed_frame_counts,
    resolve_args,
    variant_args,
    variant_of_checkpoint,
)
from vpg_pipelines.registry import KINDS, released_model, released_names

FIXTURES = REPO / "tests" / "fixtures"
SCHEDULES = json.loads((FIXTURES / "infinity_star_480p" / "schedule_480p.json").read_text())
SETTINGS_480P = json.loads((FIXTURES / "infinity_star_480p" / "settings_480p.json").read_text())
SETTINGS_INTERACT = json.loads((FIXTURES / "infinity_star_interact" / "settings_interact.json").read_text())


@pytest.fixture(scope="module")
def released():
    """Meta-weight pipelines of the released 480p and 720p entries (their plans need no weights)."""
    return {variant: released_pipeline(f"infinity-star-8b-{variant}") for variant in ("480p", "720p")}


# -- the official schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULES["schedules"]))
def test_schedules_and_steps_equal_the_official_ones(released, name):
    """Every stored schedule (480p 5 s / 10 s at the script's template and three others, 720p for reference):
    the scale schedule, the size, and every step's row of ``ar_infer_infinity_elegant``."""
    entry = SCHEDULES["schedules"][name]
    pipe = released["720p" if name.startswith("720p") else "480p"]
    assert pipe.config.official_args["pn"] == entry["pn"]
    plan = pipe.plan(entry["num_frames"], entry["height"], entry["width"])
    assert [list(s) for s in plan.schedule] == entry["scale_schedule"]
    assert plan.first_full_spatial_size_scale_index == entry["first_full_spatial_size_scale_index"]
    assert plan.scales_per_clip == entry["scales_per_clip"] and plan.num_clips == len(entry["clips"])
    assert [s.tau for s in plan.steps if s.repeat == 0] == [float(t) for t in entry["tau_per_scale"]]
    assert len(plan.steps) == entry["num_steps"]
    assert sum(s.num_sites for s in plan.steps) == entry["total_tokens_over_steps"]
    if entry["h_div_w_requested"] == 0.571:  # the script's own template: the model's default size
        assert pipe.default_size == (entry["height"], entry["width"])
    rows = entry.get("steps", [])
    referenced = {ref for row in rows for ref in row["attends_to_scales"] if ref != "text"}
    for row in rows:
        step = plan.steps[row["step"]]
        pack = plan.packs[step.scale]
        ours = {
            "scale": step.scale, "clip": step.clip, "scale_in_clip": step.rel_scale, "repeat": step.repeat,
            "repeats": step.repeat_times, "grid": list(step.grid), "tokens": step.num_sites,
            "rope_scale_index": step.real_sid, "semantic_head": step.semantic_head,
            "detail_codebook": step.detail_codebook, "bits": plan.bits_of(step), "tau": step.tau,
            "cfg": pipe.call_defaults["guidance_scale"], "codes_target_grid": list(step.target),
            "kv_cached": step.repeat == step.repeat_times - 1, "frame_ss": pack.frame_start, "frame_ee": pack.frame_end,
            "attends_to_scales": [*step.ref_sids, "text"],
        }
        assert ours == {k: row[k] for k in ours}, row["step"]
        # the official caches every scale's last repetition and frees what no later scale refers to; we store
        # only what a later scale refers to
        assert step.store_kv == (row["kv_cached"] and step.scale in referenced), row["step"]
        # gt_leak counts scales: image-to-video forces the image clip, continuation the first two clips
        assert row.get("forced_i2v_gt_leak_14", step.clip == 0) == (step.clip == 0)
        assert row.get("forced_v2v_gt_leak_28", step.clip < 2) == (step.clip < 2)


def test_continuation_condition_schedule_is_the_first_two_clips(released):
    entry = SCHEDULES["schedules"]["480p_161"]
    condition = entry["continuation"]
    plan = released["480p"].plan(161, 480, 848)
    assert condition["gt_leak"] == 2 * plan.scales_per_clip
    assert [list(s) for s in plan.schedule[: condition["gt_leak"]]] == condition["condition_scale_schedule"]
    assert sum(1 for s in plan.steps if s.clip < 2) == condition["forced_steps"] == 81
    five = released["480p"].plan(81, 480, 848)
    assert [list(s) for s in five.schedule] == condition["condition_scale_schedule"]


def test_every_aspect_template_of_the_10s_schedule():
    """The 161-frame schedule of all 15 templates at 0.40M (the script picks 0.562; the others are reachable
    through ``height`` / ``width``)."""
    meta, _ = get_dynamic_resolution_meta("infinity_elegant_clip20frames_v2", 161)
    stored = SCHEDULES["templates_480p_161"]
    assert len(stored) == 15
    for template, schedule in stored.items():
        assert [list(s) for s in meta[float(template)]["0.40M"]["pt2scale_schedule"][41]] == schedule, template


# -- the scripts' settings and lengths --------------------------------------------------------------------
def test_480p_settings_are_the_scripts():
    args = resolve_args(variant_args("480p"))
    script = {k: v["value"] for k, v in SETTINGS_480P["set_in_script_main"].items()}
    for key in ("pn", "fps", "use_apg", "use_cfg", "cfg", "tau_image", "tau_video", "apg_norm_threshold",
                "image_scale_repetition", "video_scale_repetition", "append_duration2caption", "use_two_stage_lfq",
                "detail_scale_min_tokens", "semantic_scales", "max_repeat_times", "dynamic_scale_schedule",
                "generation_duration"):
        assert args[key] == script[key], key
    assert args["video_frames"] == 1 + 16 * max(args["durations"]) == 161
    frames = SETTINGS_480P["durations"]["frames"]
    assert allowed_frame_counts(args) == sorted(frames.values()) == [81, 161]
    assert args["durations"] == sorted(int(d) for d in frames)


def test_interact_settings_are_the_scripts():
    """The registry's data for the Interact entry (its pipeline is a separate class; these are its settings)."""
    args = resolve_args(variant_args("interact"))
    script = {k: v["value"] for k, v in SETTINGS_INTERACT["args"].items()}
    assert (args["use_cfg"], args["use_apg"], args["cfg"]) == (script["use_cfg"], script["use_apg"], script["cfg"]) \
        == (1, 0, 3)
    assert args["apg_norm_threshold"] == script["apg_norm_threshold"]  # the last assignment (:134)
    assert (args["tau_image"], args["tau_video"]) == (script["taui"], script["tauv"]) == (0.5, 0.5)
    assert args["image_scale_repetition"] == args["video_scale_repetition"] == json.loads(
        script["image_scale_repetition"])
    for key in ("pn", "fps", "video_frames", "dynamic_scale_schedule", "semantic_scales", "detail_scale_min_tokens",
                "max_repeat_times", "context_frames", "context_interval", "context_from_largest_no",
                "frames_inner_clip", "append_duration2caption"):
        assert args[key] == script[key], key
    assert args["h_div_w_template"] == script["h_div_w"]
    assert allowed_frame_counts(args) == [81]  # 5 s windows


def test_480p_lengths_are_5_and_10_seconds(released):
    pipe = released["480p"]
    assert pipe.call_defaults["num_frames"] == 81 and pipe.default_size == (480, 848)
    assert pipe.caption("a cat", 161).startswith("<<<t=10s>>>")
    embeds = torch.zeros(1, 4, 2048)
    assert pipe.resolve_call(prompt_embeds=embeds, num_frames=161).arguments["num_frames"] == 161
    for bad in (1, 17, 97, 177, 81.0):
        with pytest.raises(ValueError, match=r"^`num_frames` must be 81 \(5 s\) or 161 \(10 s\) .*got") as info:
            pipe.resolve_call(prompt_embeds=embeds, num_frames=bad)
        assert "\n" not in str(info.value)
    # the 720p script's lengths are unchanged: 1 or 1 + 16 k up to 81
    assert allowed_frame_counts(released["720p"].config.official_args) == [1, 17, 33, 49, 65, 81]


def test_bad_variant_settings_are_refused():
    with pytest.raises(ValueError, match="`variant` must be one of"):
        variant_args("360p")
    with pytest.raises(ValueError, match="args.durations"):
        resolve_args({"durations": [7]})
    with pytest.raises(ValueError, match="args.generation_duration"):
        resolve_args({"generation_duration": 10})  # 161 frames, but the 720p table stops at 81


# -- the registry and the loaders ----------------------------------------------------------------------
def test_registry_knows_the_three_variants():
    kind = KINDS["infinity_star"]
    assert set(kind.variants) == {"720p", "480p", "interact"}
    for variant, spec in kind.variants.items():
        name = f"infinity-star-8b-{variant}"
        assert name in released_names() and released_model(name) == (kind, spec)
        assert spec.official_args == VARIANT_ARGS[variant]
        assert kind.variant_for_file(spec.checkpoint) == variant and kind.is_official_file(spec.checkpoint)
        assert kind.pipeline_class_for(variant) is (spec.pipeline_class or VPGInfinityStarPipeline)
        pipe = released_pipeline(name)
        assert pipe.variant == variant
        assert pipe.config.official_args == resolve_args(VARIANT_ARGS[variant])
    assert [s["num_frames"] for s in kind.variants["480p"].sizes.values()] == [81, 161]
    assert variant_of_checkpoint("my_model.safetensors") is None
    with pytest.raises(ValueError, match="`variant` of infinity_star models must be one of"):
        kind.variant("1080p")
    assert KINDS["var"].variants == {} and KINDS["var"].variant_for_file("var_d16_480p.pth") is None


def test_loaders_take_or_recognise_the_variant(tmp_path):
    root = FIXTURES / "infinity_star_480p"
    config = json.loads((root / "config.json").read_text())
    vae = shared_path("parity", "infinity_star", "videovae.safetensors")
    small = {"args": config["args"], "model": config["model"], "text_maxlen": config["text_maxlen"]}
    # the fixture's file name says 480p: the 480p script's settings, the fixture's shrunk schedule over them
    pipe = VPGInfinityStarPipeline.from_official(root / "infinity_star_480p.safetensors", vae, config=small)
    assert pipe.variant == "480p" and allowed_frame_counts(pipe.config.official_args) == [81, 161]
    assert pipe.config.official_args["pn"] == "0.06M" and pipe.default_size == (192, 336)
    # an explicit variant wins over the name; the loader checks the name against the kind's variants
    as_720p = load_official(root / "infinity_star_480p.safetensors", vae, "infinity_star", config=small,
                            variant="720p")
    assert as_720p.variant == "720p" and as_720p.config.official_args["durations"] is None
    with pytest.raises(SourceError, match="^`variant` must be one of") as info:
        load_official(root / "infinity_star_480p.safetensors", vae, "infinity_star", config=small, variant="1080p")
    assert info.value.argument == "variant"
    var = shared_path("parity", "var")
    with pytest.raises(SourceError, match="have no variants"):
        load_official(var / "var.safetensors", var / "vqvae.safetensors", "var", variant="480p")
    # saved folders keep the variant they were saved with
    pipe.save_pretrained(tmp_path / "saved")
    assert VPGInfinityStarPipeline.from_pretrained(tmp_path / "saved").variant == "480p"
    with pytest.raises(SourceError, match="^`variant` goes with an official checkpoint"):
        load_pipeline(tmp_path / "saved", variant="480p")
