"""``pipe.resolve_call(...)``: the one place a call's defaults, checks, steps and guidance chain are made, and what
the pipelines expose about the current call (``num_timesteps``, ``num_scales``, ``token_grid``) and their parts
(``weight_modules``, ``preview_image``)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.infinity import fixture_embeds, make_pipe
from tests.helpers.star import SIZE
from vpg_pipelines import ClassifierFreeGuidance, PrefixGuidance, load_demo_pipeline
from vpg_pipelines.models.infinity.adapter import scale_steps
from vpg_pipelines.pipelines.pipeline_vpg_var import DEFAULT_VPG_SCALE, PAPER_VPG_SCALES


def test_var_call_is_resolved_with_the_call_defaults(var_pipe):
    call = var_pipe.resolve_call(class_labels=[1, 2], num_images_per_prompt=2)
    assert call.class_ids == (1, 2) and call.batch == 4
    assert call.arguments["top_k"] == 900 and call.arguments["guidance_scale"] == 1.5  # the signature's defaults
    assert len(call.steps) == call.num_scales == len(var_pipe.transformer.config.patch_nums)
    assert call.with_null  # CFG 1.5 runs the null-class rows
    depth = var_pipe.transformer.config.depth
    assert call.prefix.scale == PAPER_VPG_SCALES.get(depth, DEFAULT_VPG_SCALE)
    assert call.callback_tensor_inputs == ("latents",)
    with pytest.raises(TypeError):
        call.arguments["top_k"] = 1  # read only
    off = var_pipe.resolve_call(class_labels=[1], guidance_scale=0.0, vpg_scale=1.0)
    assert not off.with_null and off.prefix.is_noop


def test_a_guiders_prefix_term_is_the_calls_prefix(var_pipe):
    term = PrefixGuidance(2.0, 0.25)
    call = var_pipe.resolve_call(class_labels=[0], guiders=[term])
    assert call.prefix is term
    off = ClassifierFreeGuidance(1.0)  # the constant schedule at 1: the conditional logits alone
    assert var_pipe.resolve_call(class_labels=[0], guiders=[off]).with_null is False


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"class_labels": [0], "top_p": 2.0}, ValueError, "top_p"),
    ({"class_labels": [0], "vpg_scales": [99]}, ValueError, "vpg_scales"),
    ({"class_labels": [0], "ssg_scale": -1.0}, ValueError, "ssg_scale"),
    ({"class_labels": [0], "no_such_argument": 1}, TypeError, "no_such_argument"),
])
def test_resolve_call_fails_as_the_call_fails(var_pipe, kwargs, error, match):
    with pytest.raises(error, match=match) as resolved:
        var_pipe.resolve_call(**kwargs)
    with pytest.raises(error, match=match) as called:
        var_pipe(**kwargs, output_type="latent")
    assert str(resolved.value) == str(called.value)


def test_infinity_call_fills_the_default_size_and_builds_its_schedule():
    pipe = make_pipe()
    embeds, mask = fixture_embeds()
    call = pipe.resolve_call(prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=3.0)
    assert (call.arguments["height"], call.arguments["width"]) == (pipe.config.default_height,
                                                                  pipe.config.default_width)
    assert call.schedule == pipe.schedule_for(pipe.config.default_height, pipe.config.default_width)
    assert list(call.steps) == scale_steps(call.schedule) and call.num_scales == call.schedule.num_scales
    assert call.num_prompts == embeds.shape[0] and call.batch == embeds.shape[0] and call.with_null
    per_scale = pipe.resolve_call(prompt_embeds=embeds, guidance_scale=[1.0] * call.num_scales, vpg_scale=1.0)
    assert not per_scale.with_null  # CFG 1 at every scale: no null rows


def test_num_timesteps_follows_the_current_call_not_a_resolved_one():
    """diffusers' meaning: the steps of the current (then the last) call; before any call, a default call's."""
    pipe = make_pipe()
    embeds, mask = fixture_embeds()
    default = pipe.num_timesteps
    assert default == pipe.num_scales == pipe.schedule_for(pipe.config.default_height,
                                                           pipe.config.default_width).num_scales
    wide = pipe.schedule_for(176, 352)  # the 1:2 template
    assert [tuple(g) for g in wide.grids] != [pipe.token_grid(k) for k in range(default)]
    pipe.resolve_call(prompt_embeds=embeds, height=176, width=352)
    assert pipe.num_timesteps == default  # resolving runs nothing
    seen = []

    def record(p, step_index, scale_index, kwargs):
        seen.append((p.num_timesteps, p.token_grid(scale_index)))
        return {}

    pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=176, width=352, top_k=1, top_p=0.0,
         vpg_scale=1.0, output_type="latent", callback_on_step_end=record)
    assert seen == [(wide.num_scales, tuple(grid)) for grid in wide.grids]
    assert pipe.num_timesteps == wide.num_scales and pipe.token_grid(0) == tuple(wide.grids[0])


def test_token_grid_names_its_argument_and_range(var_pipe):
    assert [var_pipe.token_grid(k) for k in range(var_pipe.num_scales)] == [
        (p, p) for p in var_pipe.transformer.config.patch_nums]
    with pytest.raises(ValueError, match=rf"`scale_index` must be an integer in \[0, {var_pipe.num_scales - 1}\]"):
        var_pipe.token_grid(var_pipe.num_scales)


def test_weight_modules_are_the_components_with_weights(var_pipe):
    assert var_pipe.weight_modules == {"transformer": var_pipe.transformer, "vae": var_pipe.vae}
    text = make_pipe(text=True)
    assert set(text.weight_modules) == {"transformer", "vae", "text_encoder"}
    assert set(make_pipe().weight_modules) == {"transformer", "vae"}  # no text encoder: not listed


def test_var_preview_of_the_final_latent_is_the_image():
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": ["plant", "person"], "vpg_scale": 1.0}
    latents = pipe(**kwargs, generator=[torch.Generator().manual_seed(i) for i in range(2)],
                   output_type="latent").images
    images = pipe(**kwargs, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="pt").images
    preview = pipe.preview_image(latents)
    assert preview.shape == images.shape and float(preview.min()) >= 0 and float(preview.max()) <= 1
    # (x + 1) / 2 here, x / 2 + 0.5 in diffusers' postprocessing: equal up to the rounding of one float32 op
    torch.testing.assert_close(preview, images, rtol=0, atol=2 * torch.finfo(torch.float32).eps)


def test_star_call_takes_the_models_settings_for_none(fast_pipe):
    defaults = fast_pipe.call_defaults
    args = fast_pipe.config.official_args
    assert defaults == {"guidance_scale": args["cfg"], "guidance": "apg" if args["use_apg"] else "cfg",
                        "apg_norm_threshold": args["apg_norm_threshold"], "tau_image": args["tau_image"],
                        "tau_video": args["tau_video"], "num_frames": 1 + args["fps"] * args["generation_duration"]}
    call = fast_pipe.resolve_call(prompt="a cat", num_frames=1, **SIZE)
    assert {k: call.arguments[k] for k in defaults if k != "num_frames"} == {
        k: v for k, v in defaults.items() if k != "num_frames"}
    assert call.plan == fast_pipe.plan(1, SIZE["height"], SIZE["width"])
    assert [s.index for s in call.steps] == [s.index for s in call.plan.steps]
    assert call.num_scales == len(call.plan.schedule) and call.forced_codes is None
    sized = fast_pipe.resolve_call(prompt="a cat")
    assert (sized.arguments["height"], sized.arguments["width"]) == fast_pipe.default_size
    assert fast_pipe.num_timesteps == len(fast_pipe.plan(defaults["num_frames"], *fast_pipe.default_size).steps)
    with pytest.raises(ValueError, match="prefix_codes"):
        fast_pipe.resolve_call(prompt="a cat", num_frames=1, prefix_codes=[torch.zeros(1, 1, 1, 1, 3)], **SIZE)
