"""Memory savers through diffusers' machinery, on the CPU: TorchAO int8 weights, fp8 layerwise casting and
group offloading, on the bundled demo and the parity models (their logits against float32)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.parity_logits import MODELS, agreement, infinity_logits, infinity_star_logits
from benchmarks.parity_logits import relative_error as _relative_error
from tests.helpers.infinity import fixture_root
from tests.helpers.shared import cuda_only, shared_path
from vpg_pipelines import VPGVARPipeline, load_demo_pipeline
from vpg_pipelines.memory import weight_layout
from vpg_pipelines.memory.offload import apply_offload
from vpg_pipelines.memory.quantization import pipeline_quantization_config, quantize_transformer
from vpg_pipelines.memory.weights import LAYERWISE_SKIP

pytest.importorskip("torchao", reason="TorchAO (the int8 back end) is in the test extra")

# Relative RMS error of the logits against float32 (||q - f|| / ||f||) each format must stay under:
# int8 rounds a weight row to 127 levels of its largest magnitude (error <= max/254, RMS max/(254*sqrt 3),
# about 1 % of a row's RMS for weights whose max is ~4x their RMS), a few layers deep: under 5 %.
# fp8 e4m3 keeps 3 mantissa bits (relative rounding <= 2^-4, RMS 2^-4/sqrt 3 = 3.6 % per weight) and
# computes in bf16 (2^-8): under 15 % a few layers deep.
INT8_RTOL, FP8_RTOL = 0.05, 0.15


@pytest.fixture(scope="module", params=list(MODELS))
def parity(request):
    pipe, logits = MODELS[request.param]()
    return request.param, pipe, logits, logits(pipe.transformer)


def test_int8_weights_through_torchao(parity):
    """TorchAO int8 weight-only, loaded by diffusers: the planned bytes, the logits within INT8_RTOL."""
    name, pipe, logits, reference = parity
    planned = weight_layout(pipe.transformer, torch.float32, "int8").total
    quantized = quantize_transformer(copy.deepcopy(pipe.transformer), "int8", torch.float32)
    assert weight_layout(quantized).total == planned < weight_layout(pipe.transformer).total
    assert any(type(m.weight).__name__ == "Int8Tensor" for m in quantized.modules() if isinstance(m, torch.nn.Linear))
    ours = logits(quantized)
    error, agree = _relative_error(ours, reference), agreement(ours, reference)
    print(f"{name} int8: relative logits error {error:.4f}, code agreement {agree:.4f}")
    assert error <= INT8_RTOL


def _fp8_rounded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose layerwise-cast layers hold their fp8-rounded values in bf16: what layerwise casting computes."""
    import re

    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    reference = copy.deepcopy(model)
    skip = LAYERWISE_SKIP + tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in reference.named_modules():
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and not any(re.search(p, name) for p in skip):
            for key, param in list(module.named_parameters(recurse=False)):
                rounded = param.detach().to(torch.float8_e4m3fn).to(torch.bfloat16)
                setattr(module, key, torch.nn.Parameter(rounded, requires_grad=False))
    return reference


def test_fp8_layerwise_casting(parity):
    """``enable_layerwise_casting(float8_e4m3fn, bf16)``: bitwise what fp8-rounded weights compute in bf16
    (same values, same operations), and within FP8_RTOL of float32."""
    name, pipe, logits, reference = parity
    expected = logits(_fp8_rounded(pipe.transformer))
    model = copy.deepcopy(pipe.transformer)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert weight_layout(model).total == weight_layout(pipe.transformer, torch.float32, "fp8").total
    ours = logits(model)
    assert torch.equal(ours, expected)
    error, agree = _relative_error(ours, reference), agreement(ours, reference)
    print(f"{name} fp8: relative logits error {error:.4f}, code agreement {agree:.4f}")
    assert error <= FP8_RTOL


def test_fp8_layerwise_casting_on_the_bundled_model_as_a_user_would():
    """The issue's reproduction: once failed with a dtype mismatch in ``word_embed``."""
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    images = pipe(["plant"], generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 1 and images[0].size == (32, 32)


def test_int8_pipeline_round_trip_through_from_pretrained(tmp_path):
    """``from_pretrained(quantization_config=PipelineQuantizationConfig(...))`` quantizes the transformer only,
    ``save_pretrained`` stores it quantized, and the reloaded pipeline samples the same images."""
    from vpg_pipelines.loading.auto import demo_path

    config = pipeline_quantization_config("int8", torch.bfloat16)
    pipe = VPGVARPipeline.from_pretrained(str(demo_path()), quantization_config=config, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.transformer.head.weight).__name__ == "Int8Tensor"
    assert not any("Int8" in type(p).__name__ for p in pipe.vae.parameters())
    first = pipe(["plant", "flag"], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    pipe.save_pretrained(tmp_path)
    again = VPGVARPipeline.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    again.set_progress_bar_config(disable=True)
    assert type(again.transformer.head.weight).__name__ == "Int8Tensor"
    second = again(["plant", "flag"], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(first, second)  # the same stored values, the same computation


def test_from_official_takes_a_quantization():
    root = shared_path("parity", "var")
    config = json.loads((root / "config.json").read_text())
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config,
                                        quantization="int8")
    assert type(pipe.transformer.head.weight).__name__ == "Int8Tensor"
    with pytest.raises(ValueError, match="quantization"):
        VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config,
                                     quantization="int2")


def _fresh(name):
    if name == "var":
        pipe = load_demo_pipeline()
        return pipe, {"prompt": ["plant", "flag"], "guidance_scale": 3.0, "vpg_scale": 1.5, "output_type": "pt"}
    if name == "infinity":
        pipe, _ = infinity_logits()
        cases = load_file(str(fixture_root("plain") / "cases.safetensors"))
        lens = cases["text.lens"].tolist()
        embeds = torch.zeros(len(lens), max(lens), pipe.transformer.config.text_channels)
        mask = torch.zeros(len(lens), max(lens), dtype=torch.long)
        for i, chunk in enumerate(cases["text.features"].split(lens)):
            embeds[i, : len(chunk)], mask[i, : len(chunk)] = chunk, 1
        return pipe, {"prompt_embeds": embeds, "prompt_attention_mask": mask, "height": 256, "width": 256,
                      "vpg_scale": 1.5, "output_type": "pt"}
    pipe, _ = infinity_star_logits()
    cases = load_file(str(shared_path("parity", "infinity_star") / "cases.safetensors"))
    return pipe, {"prompt_embeds": cases["text.features"][None], "num_frames": 17, "height": 192, "width": 336,
                  "output_type": "latent"}


@pytest.mark.parametrize("name", ["var", "infinity", "infinity_star"])
def test_group_offloading_gives_the_same_outputs(name):
    """Block-level group offloading (diffusers' hooks on the transformer blocks; the cache passes the hooks
    untouched through ``_skip_keys``): on the CPU the same computation, so the same bits."""
    pipe, kwargs = _fresh(name)
    pipe.set_progress_bar_config(disable=True)
    batch = pipe.estimate_memory(**kwargs).settings["batch"]

    def run():
        out = pipe(**kwargs, generator=[torch.Generator().manual_seed(i) for i in range(batch)])
        return out.frames if name == "infinity_star" else out.images

    expected = run()
    apply_offload(pipe, "group", "cpu")
    hooked = [m for m in pipe.transformer.modules() if getattr(m, "_diffusers_hook", None) is not None]
    assert any(m._diffusers_hook.get_hook("group_offloading") is not None for m in hooked)
    assert torch.equal(run(), expected)


@cuda_only("bitsandbytes 4-bit needs a CUDA GPU (none found)")
def test_nf4_weights_through_bitsandbytes_on_cuda(parity):
    """bitsandbytes NF4 (CUDA): the planned bytes, the logits within 4x the int8 bound (4 bits: 16 levels
    per block of 64 instead of 255 per row)."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    name, pipe, logits, reference = parity
    planned = weight_layout(pipe.transformer, torch.bfloat16, "nf4").total
    quantized = quantize_transformer(copy.deepcopy(pipe.transformer).to(torch.bfloat16), "nf4", torch.bfloat16)
    quantized.to("cuda")
    assert weight_layout(quantized).total == planned
    error, agree = _relative_error(logits(quantized), reference), agreement(logits(quantized), reference)
    print(f"{name} nf4 (cuda): relative logits error {error:.4f}, code agreement {agree:.4f}")
    assert error <= 4 * INT8_RTOL


@cuda_only("group offloading with CUDA streams needs a CUDA GPU (none found)")
@pytest.mark.parametrize("name", ["var", "infinity", "infinity_star"])
def test_group_offloading_with_streams_on_cuda(name):
    """Streams prefetch the next block while one runs: the same computation as without offloading on the
    GPU (the same kernels on the same values), so the same bits."""
    pipe, kwargs = _fresh(name)
    pipe.set_progress_bar_config(disable=True)
    batch = pipe.estimate_memory(**kwargs).settings["batch"]
    kwargs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def run():
        out = pipe(**kwargs, generator=[torch.Generator().manual_seed(i) for i in range(batch)])
        return (out.frames if name == "infinity_star" else out.images).cpu()

    pipe.to("cuda")
    expected = run()
    pipe.to("cpu")
    apply_offload(pipe, "group", "cuda")
    assert torch.equal(run(), expected)
