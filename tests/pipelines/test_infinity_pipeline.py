"""VPGInfinityPipeline: parity with the official greedy samples through ``pipe(...)``, T5 text encoding,
and the diffusers pipeline contract (mirrors tests/pipelines/test_var_pipeline.py)."""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.infinity import fixture_embeds, fixture_root, load_fixture, make_pipe, report
from tests.helpers.numerics import (
    assert_greedy_margin,
    assert_same_steps,
    cfg_gain,
    layout_atol,
    record_draws,
    vpg_gain,
)
from tests.helpers.shared import cuda_only, shared_path
from vpg_pipelines import VPGInfinityPipeline
from vpg_pipelines.models.infinity.schedules import schedule_from_template
from vpg_pipelines.sampling.next_scale import SamplerTrace
from vpg_pipelines.testing import WORDS, tiny_t5

ATOL = 1e-4
CFG_GAIN = cfg_gain(3.0)  # the default guidance_scale


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    return make_pipe("plain", text=True)


# -- parity with the official sampler ---------------------------------------------------------------
CASES = [("plain", "cfg3_logits_tau0p5"), ("plain", "cfg2_layer-1_tau1"),
         ("patchify", "cfg3_logits_tau1"), ("patchify", "cfg1p5_logits_tau0p5")]


@pytest.mark.parametrize("folder,tag", CASES)
def test_greedy_pipeline_reproduces_official_images_and_logits(folder, tag):
    """``top_k=1`` through ``pipe(prompt_embeds=...)``: per-scale guided logits and the final codes within
    1e-4, images within 1e-4 in [0, 1] (the fixtures' 2e-4 in [-1, 1], see test_infinity_sampling_parity)."""
    _, _, cases, _, meta = load_fixture(folder)
    case = next(c for c in meta["sampling_cases"] if c["tag"] == tag)
    pipe = make_pipe(folder)
    embeds, mask = fixture_embeds(folder)
    trace, latents = SamplerTrace(), []

    def keep_latents(p, i, t, kwargs):
        latents.append(kwargs["latents"])
        return {}

    images = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, height=256, width=256,
                  guidance_scale=case["cfg_list"], tau=case["tau_list"],
                  cfg_insertion_layer=case["cfg_insertion_layer"][0], top_k=1, top_p=0.0, vpg_scale=1.0,
                  output_type="pt", trace=trace, callback_on_step_end=keep_latents).images
    assert len(trace.guided) == pipe.num_timesteps == len(latents) == 7
    worst = 0.0
    for k, guided in trace.guided.items():
        expected = cases[f"sample.{tag}.guided_logits.scale{k}"]
        assert_greedy_margin(expected, ATOL, classes=2)  # so greedy bits within ATOL of these logits agree
        worst = max(worst, report(f"{folder} {tag} scale {k} guided logits", guided.reshape(expected.shape),
                                  expected))
    assert worst <= ATOL
    assert report(f"{folder} {tag} summed codes", latents[-1], cases[f"sample.{tag}.summed_codes"]) <= ATOL
    assert images.min() >= 0 and images.max() <= 1
    expected = (cases[f"sample.{tag}.image"] + 1) / 2
    assert report(f"{folder} {tag} image in [0, 1]", images, expected) <= ATOL
    official_uint8 = cases[f"sample.{tag}.image_uint8_bgr"].flip(dims=(3,)).permute(0, 3, 1, 2).int()
    assert (images.mul(255).to(torch.uint8).int() - official_uint8).abs().max() <= 1


def test_latent_output_is_the_official_summed_codes():
    _, _, cases, _, _ = load_fixture("plain")
    embeds, mask = fixture_embeds()
    latent = make_pipe()(prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=3.0, tau=0.5, top_k=1,
                         top_p=0.0, vpg_scale=1.0, output_type="latent").images
    assert report("latent output", latent, cases["sample.cfg3_logits_tau0p5.summed_codes"]) <= ATOL


# -- sizes ----------------------------------------------------------------------------------------
def test_template_sizes_map_exactly_and_others_snap_with_a_message(caplog):
    pipe = make_pipe()
    assert pipe.config.default_height == 256 and pipe.num_timesteps == 7
    with caplog.at_level(logging.WARNING):
        assert pipe.schedule_for(256, 256) == schedule_from_template(1.0, "0.06M")
        assert pipe.schedule_for(176, 352) == schedule_from_template(0.5, "0.06M")
        assert pipe.schedule_for(1024, 1024) == schedule_from_template(1.0, "1M")
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        snapped = pipe.schedule_for(300, 290)
    assert snapped.grids == schedule_from_template(1.0, "0.06M").grids
    assert "300x290" in caplog.text and "256x256" in caplog.text
    embeds, mask = fixture_embeds()
    latent = pipe(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1], height=176, width=352,
                  output_type="latent", generator=gens(0)).images
    assert latent.shape == (1, 16, 11, 22)
    patch = make_pipe("patchify")
    image = patch(prompt_embeds=embeds[:1], prompt_attention_mask=mask[:1], height=352, width=176,
                  output_type="pt", generator=gens(0)).images
    assert image.shape == (1, 3, 352, 176)


# -- text -----------------------------------------------------------------------------------------
def test_encode_prompt_follows_the_official_t5_recipe(pipe):
    """Valid tokens include ``</s>``; padding to the longest prompt gives the features of the official
    ``padding='max_length'`` call; the prompt path equals passing those embeddings."""
    prompts = ["a red cat", "photo of a wax seal with the letters vpg"]
    embeds, mask = pipe.encode_prompt(prompts)
    assert mask.sum(1).tolist() == [4, 10] and embeds.dtype == torch.float32
    tokens = pipe.tokenizer(prompts, max_length=16, padding="max_length", truncation=True, return_tensors="pt")
    full = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    for i, n in enumerate([4, 10]):  # padded to 10 vs 16 tokens: another layout, equal up to rounding
        torch.testing.assert_close(embeds[i, :n], full[i, :n].float(), atol=layout_atol(full[i, :n]), rtol=0)
    # features equal up to rounding: the second run follows the first one's draws (numerics.record_draws)
    kw = dict(top_k=0, top_p=0.0, vpg_scale=1.0, output_type="latent")
    by_text, by_embeds = SamplerTrace(), SamplerTrace()
    with record_draws() as reference:
        from_text = pipe(prompt=prompts, generator=gens(0, 1), trace=by_text, **kw).images
    with record_draws(replay=reference) as replayed:
        from_embeds = pipe(prompt_embeds=full, prompt_attention_mask=tokens.attention_mask, generator=gens(0, 1),
                           trace=by_embeds, **kw).images
    assert_same_steps(by_text, by_embeds, replayed, CFG_GAIN)
    torch.testing.assert_close(from_text, from_embeds, atol=1e-5, rtol=0)  # the same bits: the same sums


def test_long_prompts_are_truncated_at_text_maxlen(pipe):
    embeds, mask = pipe.encode_prompt(" ".join(WORDS * 3))
    assert mask.sum().item() == pipe.transformer.config.text_maxlen == 16


def test_negative_prompts(pipe):
    kw = dict(prompt=["a red cat", "a blue dog"], top_k=0, top_p=0.0, vpg_scale=1.0, output_type="latent")
    traces = {name: SamplerTrace() for name in ("plain", "negative", "by_embeds", "mixed")}
    with record_draws() as plain_draws:
        plain = pipe(**kw, generator=gens(0, 1), trace=traces["plain"]).images
    assert torch.equal(pipe(**kw, negative_prompt="", generator=gens(0, 1)).images, plain)  # the learned null text
    with record_draws() as negative_draws:
        negative = pipe(**kw, negative_prompt="green seal", generator=gens(0, 1), trace=traces["negative"]).images
    assert not torch.allclose(negative, plain)
    # the same texts encoded in other batches: equal up to rounding, so these runs follow the draws above
    embeds, mask = pipe.encode_prompt(["green seal", "green seal"])
    with record_draws(replay=negative_draws) as replayed:
        by_embeds = pipe(**kw, negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask,
                         generator=gens(0, 1), trace=traces["by_embeds"]).images
    assert_same_steps(traces["negative"], traces["by_embeds"], replayed, CFG_GAIN)
    torch.testing.assert_close(by_embeds, negative, atol=1e-5, rtol=0)
    mixed_reference = type(plain_draws)(codes={0: plain_draws.codes[0], 1: negative_draws.codes[1]})
    with record_draws(replay=mixed_reference) as replayed:
        mixed = pipe(**kw, negative_prompt=["", "green seal"], generator=gens(0, 1), trace=traces["mixed"]).images
    mixed_trace = SamplerTrace(guided={k: v[:1] for k, v in traces["mixed"].guided.items()})
    assert_same_steps(traces["plain"], mixed_trace, replayed, CFG_GAIN, rows=slice(0, 1))
    mixed_trace = SamplerTrace(guided={k: v[1:] for k, v in traces["mixed"].guided.items()})
    assert_same_steps(traces["negative"], mixed_trace, replayed, CFG_GAIN, rows=slice(1, 2))
    torch.testing.assert_close(mixed[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], negative[1], atol=1e-5, rtol=0)
    off = pipe(**{**kw, "negative_prompt": "green seal"}, guidance_scale=1.0, generator=gens(0, 1)).images
    assert torch.equal(off, pipe(**kw, guidance_scale=1.0, generator=gens(0, 1)).images)  # no CFG: ignored


def test_vpg_changes_the_sample_and_w1_is_identity(pipe):
    kw = dict(prompt="a red cat", top_k=1, top_p=0.0, output_type="latent")
    plain = pipe(**kw, vpg_scale=1.0, generator=gens(0)).images
    assert torch.equal(pipe(**kw, vpg_scale=1.0, vpg_corruption=0.9, generator=gens(5)).images, plain)
    assert not torch.equal(pipe(**kw, vpg_scale=3.0, generator=gens(0)).images, plain)


# -- the diffusers contract ---------------------------------------------------------------------------
def test_call_signature_and_components(pipe):
    params = inspect.signature(VPGInfinityPipeline.__call__).parameters
    for name in ("prompt", "negative_prompt", "height", "width", "num_images_per_prompt", "guidance_scale", "tau",
                 "cfg_insertion_layer", "top_k", "top_p", "vpg_scale", "vpg_corruption", "vpg_mode", "vpg_refresh",
                 "vpg_scales", "generator", "prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                 "negative_prompt_attention_mask", "output_type", "return_dict", "callback_on_step_end",
                 "callback_on_step_end_tensor_inputs"):
        assert name in params
    assert set(pipe.components) == {"transformer", "vae", "text_encoder", "tokenizer"}
    assert VPGInfinityPipeline.model_cpu_offload_seq == "text_encoder->transformer->vae"


@pytest.mark.parametrize("text", [True, False])
def test_save_load_round_trip_is_bit_identical(text, tmp_path):
    pipe = make_pipe("patchify", text=text)
    kw = dict(prompt=["a red cat", "the wax seal"]) if text else dict(
        prompt_embeds=fixture_embeds("patchify")[0], prompt_attention_mask=fixture_embeds("patchify")[1])
    kw |= dict(vpg_scale=2.0, guidance_scale=[1.0, 2, 3, 3, 3, 3, 4], output_type="pt")
    before = pipe(**kw, generator=gens(0, 1)).images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VPGInfinityPipeline"
    assert index["transformer"] == ["vpg_pipelines.models.infinity.transformer", "InfinityTransformer"]
    assert index["default_height"] == 256
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    if text:
        assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    else:
        assert index["text_encoder"] == [None, None]
    loaded = VPGInfinityPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.text_encoder is None) == (not text)
    after = loaded(**kw, generator=gens(0, 1)).images
    assert torch.equal(before, after)
    half = VPGInfinityPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.transformer.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16


def test_output_types_agree(pipe):
    kw = dict(prompt=["a red cat", "a blue dog"], vpg_scale=2.0)
    pt = pipe(**kw, generator=gens(0, 1), output_type="pt").images
    np_ = pipe(**kw, generator=gens(0, 1), output_type="np").images
    pil = pipe(**kw, generator=gens(0, 1), output_type="pil").images
    (latent,) = pipe(**kw, generator=gens(0, 1), output_type="latent", return_dict=False)
    assert pt.shape == (2, 3, 256, 256) and np_.shape == (2, 256, 256, 3) and len(pil) == 2
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (256, 256)
    assert np.abs(pt.permute(0, 2, 3, 1).numpy() - np_).max() < 1e-6
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - np_[0]).max() <= 1 / 255 + 1e-6
    assert latent.shape == (2, 16, 16, 16)
    decoded = (pipe.vae.decode(latent) + 1) / 2
    torch.testing.assert_close(decoded, pt, atol=1e-5, rtol=0)


def test_batch_and_num_images_per_prompt_equal_images_generated_one_by_one(pipe):
    # top_p = 0: a top-p cut-off near a bit's probability would be a tie that the draw log cannot see
    kw = dict(vpg_scale=2.0, vpg_mode="full", top_p=0.0, output_type="latent")
    batch_trace = SamplerTrace()
    with record_draws() as reference:
        batch = pipe(prompt=["a red cat", "a blue dog"], num_images_per_prompt=2, generator=gens(10, 11, 12, 13),
                     trace=batch_trace, **kw).images
    assert batch.shape[0] == 4
    for i, (prompt, seed) in enumerate([("a red cat", 10), ("a red cat", 11), ("a blue dog", 12), ("a blue dog", 13)]):
        trace = SamplerTrace()
        with record_draws(replay=reference) as replayed:  # 1 row vs 4: equal up to rounding
            one = pipe(prompt=prompt, generator=gens(seed), trace=trace, **kw).images
        assert_same_steps(batch_trace, trace, replayed, CFG_GAIN * vpg_gain(2.0), rows=slice(i, i + 1))
        torch.testing.assert_close(batch[i : i + 1], one, atol=1e-4, rtol=0)
    assert not torch.equal(batch[0], batch[1])


def test_deterministic_for_a_seed(pipe):
    kw = dict(prompt="a red cat", vpg_scale=2.0, vpg_refresh="resample", output_type="latent")
    a = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    b = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(a, b)


def test_callback_sees_each_scale_and_its_edits_reach_later_scales(pipe, capsys):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, t, tuple(kwargs["latents"].shape)))
        if i == p.num_timesteps - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    out = pipe(prompt="a red cat", output_type="latent", callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents"])
    assert [s[0] for s in seen] == list(range(7)) and seen[0][2] == (1, 16, 16, 16)
    assert out.images.abs().sum() == 0

    def zero_after_first(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 0 else {}

    kw = dict(prompt="a red cat", top_k=1, top_p=0.0, output_type="latent")
    plain = pipe(**kw).images
    trace = SamplerTrace()
    edited = pipe(**kw, callback_on_step_end=zero_after_first, trace=trace).images
    assert not torch.equal(plain, edited)
    assert trace.inputs[1].content.abs().sum() == 0  # scale 1 starts from the zeroed codes
    assert trace.inputs[2].content.abs().sum() > 0
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe(**kw)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "7/7" in capsys.readouterr().err


def test_callback_can_stop_early(pipe):
    calls = []

    def callback(p, i, t, kwargs):
        calls.append(i)
        if i == 2:
            p._interrupt = True
        return {}

    out = pipe(prompt="a red cat", output_type="pt", callback_on_step_end=callback)
    assert calls == [0, 1, 2] and out.images.shape == (1, 3, 256, 256)
    pipe(prompt="a red cat", output_type="latent", callback_on_step_end=lambda *a: {})
    assert not pipe.interrupt


# -- bad input ------------------------------------------------------------------------------------
def test_specific_bad_inputs_name_the_argument(pipe):
    embeds, mask = fixture_embeds()
    no_text = make_pipe()
    cases = [
        (dict(prompt="a cat", prompt_embeds=embeds), "prompt"),
        (dict(), "prompt"),
        (dict(prompt=["a cat", 3]), "prompt"),
        (dict(prompt_embeds=embeds[..., :64]), "prompt_embeds"),
        (dict(prompt_embeds=embeds, prompt_attention_mask=mask[:, :3]), "prompt_attention_mask"),
        (dict(prompt_embeds=embeds, prompt_attention_mask=mask * 2), "prompt_attention_mask"),
        (dict(prompt_embeds=torch.zeros(1, 17, 128)), "prompt_embeds"),
        (dict(prompt="a cat", negative_prompt=["x", "y"]), "negative_prompt"),
        (dict(prompt_embeds=embeds, negative_prompt_embeds=embeds[:1]), "negative_prompt_embeds"),
        (dict(prompt="a cat", guidance_scale=[3.0] * 6), "guidance_scale"),
        (dict(prompt="a cat", tau=0.0), "tau"),
        (dict(prompt="a cat", cfg_insertion_layer=-3), "cfg_insertion_layer"),
        (dict(prompt="a cat", cfg_insertion_layer=1), "cfg_insertion_layer"),
        (dict(prompt="a cat", height=0), "height"),
        (dict(prompt="a cat", vpg_scales=[7]), "vpg_scales"),
        (dict(prompt="a cat", generator=gens(0, 1)), "generator"),
    ]
    for kwargs, name in cases:
        with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
            pipe(**kwargs)
    with pytest.raises(ValueError, match="`prompt` needs a text encoder"):
        no_text(prompt="a cat")


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=6), st.lists(st.integers(-2, 12), max_size=3))
ARGS = {
    "prompt": st.one_of(ANY, st.lists(st.sampled_from(WORDS), max_size=2)),
    "negative_prompt": ANY,
    "height": st.one_of(ANY, st.sampled_from([176, 256, 300])),
    "num_images_per_prompt": ANY,
    "guidance_scale": st.one_of(ANY, st.lists(st.floats(0, 5), min_size=7, max_size=7)),
    "tau": st.one_of(ANY, st.lists(st.floats(0, 2), min_size=7, max_size=7)),
    "cfg_insertion_layer": ANY,
    "top_k": ANY,
    "top_p": ANY,
    "vpg_scale": ANY,
    "vpg_corruption": ANY,
    "vpg_mode": st.one_of(ANY, st.sampled_from(["full", "token", "position", "codebook"])),
    "vpg_scales": st.one_of(ANY, st.sampled_from(["all", "semantic"]), st.lists(st.integers(-1, 7), max_size=3)),
    "output_type": st.one_of(ANY, st.sampled_from(["latent"])),
    "generator": st.one_of(st.none(), st.integers(0, 3).map(lambda n: gens(*range(n)))),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=ARGS))
def test_bad_input_never_crashes_deep_inside(pipe, kwargs):
    kwargs = dict(kwargs)
    kwargs.setdefault("prompt", "a red cat")
    kwargs.setdefault("output_type", "latent")
    try:
        pipe(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        named = [name for name in kwargs if f"`{name}`" in message]
        assert named, f"error does not name an argument: {message!r} for {kwargs}"


# -- loading --------------------------------------------------------------------------------------
def test_from_official_with_text_encoder_paths_and_config(tmp_path):
    root = fixture_root("plain")
    config = json.loads((root / "config.json").read_text())
    encoder, tokenizer = tiny_t5()
    encoder.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    pipe = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors",
                                             text_encoder=str(tmp_path / "t5"), config=config)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.config.default_height, pipe.config.default_width) == (256, 256)
    embeds, mask = pipe.encode_prompt("a red cat")
    torch.testing.assert_close(embeds, make_pipe(text=True).encode_prompt("a red cat")[0], atol=0, rtol=0)
    bare = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors")
    assert bare.text_encoder is None and bare.config.default_height == 1024
    wide, _ = tiny_t5(64)
    with pytest.raises(ValueError, match="`text_encoder`"):
        VPGInfinityPipeline(bare.transformer, bare.vae, wide, tokenizer)
    with pytest.raises(ValueError, match="bits per site"):
        VPGInfinityPipeline(bare.transformer, load_fixture("patchify")[1])


def test_bfloat16_runs_on_cpu():
    root = shared_path("parity", "infinity")
    config = json.loads((root / "config.json").read_text())
    pipe = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors", config=config,
                                             torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    embeds, mask = fixture_embeds()
    latents = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, vpg_scale=2.0, generator=gens(0, 1),
                   output_type="latent").images
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    with torch.no_grad():  # a bf16 decode of the full 256 px image takes minutes on a CPU: a corner only
        corner = pipe.vae.decode(latents[:, :, :4, :4])
    assert corner.dtype == torch.float32 and torch.isfinite(corner).all()


# -- accelerate offload ------------------------------------------------------------------------------
def fresh() -> VPGInfinityPipeline:
    """A pipeline with its own model copies (the fixture models are shared by the other tests)."""
    root = fixture_root("plain")
    config = json.loads((root / "config.json").read_text())
    encoder, tokenizer = tiny_t5()
    pipe = VPGInfinityPipeline.from_official(root / "infinity.safetensors", root / "vae.safetensors",
                                             encoder, tokenizer, config=config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("hooks", ["sequential", "model"])
def test_offload_hooks_on_cpu_give_the_same_images(hooks):
    """accelerate's hooks on all three models with the CPU as execution device: sequential offload keeps
    weights on meta until their module's forward runs (so text encoding, sampling and decoding read no
    weight outside a forward); model offload re-sends every call's arguments."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    kw = dict(prompt=["a red cat", "a blue dog"], negative_prompt="green", vpg_scale=2.0, vpg_mode="codebook",
              output_type="pt")
    reference = fresh()(**kw, generator=gens(0, 1)).images
    pipe = fresh()
    for module in (pipe.text_encoder, pipe.transformer, pipe.vae):
        if hooks == "sequential":
            cpu_offload(module, execution_device=torch.device("cpu"))
        else:
            cpu_offload_with_hook(module, execution_device=torch.device("cpu"))
    if hooks == "sequential":
        assert pipe.transformer.head.weight.device.type == "meta"
        assert next(pipe.text_encoder.parameters()).device.type == "meta"
    images = pipe(**kw, generator=gens(0, 1)).images
    assert torch.equal(images, reference)


# -- accelerate offload (needs a GPU) ---------------------------------------------------------------
needs_cuda = cuda_only("CPU offload needs a CUDA GPU (none found)")


@needs_cuda
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_gives_the_same_images(offload):
    """Text encoder, transformer and VAE take turns on the GPU; greedy images equal the all-on-GPU run."""
    kw = dict(prompt=["a red cat", "a blue dog"], vpg_scale=2.0, top_k=1, top_p=0.0, output_type="pt")
    reference = fresh().to("cuda")(**kw, generator=gens(0, 1)).images
    pipe = fresh()
    getattr(pipe, f"enable_{offload}_cpu_offload")()
    for _ in range(2):  # twice: hooks are re-armed after a call
        images = pipe(**kw, generator=gens(0, 1)).images
        # the same device and shapes; 1e-4 leaves room for GPU kernels that are not run-to-run deterministic
        torch.testing.assert_close(images, reference, atol=1e-4, rtol=0)
    if offload == "model":
        assert all(p.device.type == "cpu" for p in pipe.transformer.parameters())


# -- command line ---------------------------------------------------------------------------------
def test_cli_generates_from_a_saved_infinity_folder(tmp_path, capsys):
    from vpg_pipelines.cli import main

    folder = tmp_path / "infinity-vpg"
    make_pipe(text=True).save_pretrained(folder)
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(folder), "--prompt", "a red cat", "--prompt", "3",
                 "--negative-prompt", "blue", "--height", "256", "--width", "256", "--vpg-scale", "2", "--seed", "0",
                 "--compare", "--out", str(out), "--device", "cpu"]) == 0
    grid = PIL.Image.open(out)
    assert grid.width > 2 * 256 and grid.height > 2 * 256
    assert main(["generate", "--model", "demo", "--prompt", "1", "--height", "256", "--out", str(out)]) == 2
    assert "Infinity" in capsys.readouterr().err
