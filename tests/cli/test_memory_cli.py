"""``vpg memory`` and the memory flags of ``vpg generate`` / ``vpg convert``."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch

from tests.helpers.cli import infinity_folder  # noqa: F401 (a fixture: the converted Infinity folder)
from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline, VPGVARPipeline
from vpg_pipelines.cli import main
from vpg_pipelines.loading.auto import empty_pipeline_from_folder
from vpg_pipelines.memory.weights import weight_layout

pytest.importorskip("torchao", reason="TorchAO (the int8 back end) is in the test extra")


def test_memory_report_of_the_demo(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["memory", "--model", "demo", "--prompt", "plant", "--vpg-scale", "1.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "K/V cache peak" in text and "sequential" in text
    plan = json.loads(out.read_text())
    assert plan["settings"]["model"] == "var" and plan["kv_peak"] > 0
    assert set(plan["plans"]) == {"none", "model", "group", "sequential"}


def test_memory_report_of_a_released_model_with_auto(capsys):
    assert main(["memory", "--model", "infinity-2b", "--text-tokens", "16", "--free-gib", "4"]) == 0
    text = capsys.readouterr().out
    assert "size 1024x1024" in text and "text_encoder" in text
    assert "auto for 4.00 GiB free" in text


def test_memory_of_a_saved_folder_reads_no_weights_and_plans_like_the_loaded_pipeline(infinity_folder):  # noqa: F811
    empty = empty_pipeline_from_folder(infinity_folder)
    assert next(empty.transformer.parameters()).device.type == "meta"
    loaded = VPGInfinityPipeline.from_pretrained(infinity_folder)
    call = {"prompt": "a red fox", "height": 256, "width": 256, "vpg_scale": 1.5}
    planned, real = empty.estimate_memory(**call).to_dict(), loaded.estimate_memory(**call).to_dict()
    assert planned == real  # same architecture, same tokenizer, same call


def test_convert_int8_then_plan_and_generate(tmp_path, capsys):
    root = shared_path("parity", "var")
    folder = tmp_path / "var-int8"
    assert main(["convert", "--var", str(root / "var.safetensors"), "--vae", str(root / "vqvae.safetensors"),
                 "--config", str(root / "config.json"), "--dtype", "bf16", "--quantization", "int8",
                 "--out", str(folder)]) == 0
    pipe = VPGVARPipeline.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert type(pipe.transformer.head.weight).__name__ == "Int8Tensor"
    plan = tmp_path / "plan.json"
    assert main(["memory", "--model", str(folder), "--prompt", "1", "--json", str(plan)]) == 0
    planned = json.loads(plan.read_text())
    assert planned["settings"]["quantization"] == "int8"
    assert planned["weights"]["transformer"] == weight_layout(pipe.transformer).total
    image = tmp_path / "out.png"
    assert main(["generate", "--model", str(folder), "--prompt", "1", "--offload", "group", "--out", str(image)]) == 0
    assert PIL.Image.open(image).size == (64, 64)


def test_generate_with_quantization_and_offload_flags(tmp_path, capsys):
    plain, saved = tmp_path / "plain.png", tmp_path / "saved.png"
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--out", str(plain)]) == 0
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--offload", "auto", "--out", str(saved)]) == 0
    assert PIL.Image.open(plain).tobytes() == PIL.Image.open(saved).tobytes()  # CPU: auto keeps everything
    fp8 = tmp_path / "fp8.png"
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--quantization", "fp8", "--out", str(fp8)]) == 0
    assert PIL.Image.open(fp8).size == (32, 32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of bitsandbytes")
def test_nf4_on_the_cpu_fails_naming_the_flag(tmp_path, capsys):
    assert main(["generate", "--model", "demo", "--prompt", "plant", "--quantization", "nf4",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--quantization 'nf4' is not available on 'cpu' (CPU)" in capsys.readouterr().err


def test_fit_to_memory_applies_what_the_planner_picked():
    from vpg_pipelines import load_demo_pipeline
    from vpg_pipelines.memory.choose import MARGIN_BYTES, fit_to_memory

    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": ["plant"], "vpg_scale": 1.5}
    plain = pipe.estimate_memory(**call)
    budget = (plain.peak("group") + plain.peak("none")) // 2  # only offloading fits
    choice = fit_to_memory(pipe, free_bytes=budget + MARGIN_BYTES, device="cpu", **call)
    assert choice.fits and choice.quantization == "none" and choice.offload in ("model", "group")
    if choice.offload == "group":
        assert any(getattr(m, "_diffusers_hook", None) is not None for m in pipe.transformer.modules())
    images = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 1
    with pytest.raises(ValueError, match="free_bytes"):
        fit_to_memory(load_demo_pipeline(), device="cpu", **call)


def test_fit_to_memory_quantizes_when_only_int8_fits():
    from vpg_pipelines import load_demo_pipeline
    from vpg_pipelines.memory.choose import MARGIN_BYTES, fit_to_memory

    pipe = load_demo_pipeline()
    call = {"prompt": ["plant"], "vpg_scale": 1.5}
    full = min(pipe.estimate_memory(**call).peak(m) for m in ("none", "model", "group"))
    int8 = pipe.estimate_memory(quantization="int8", **call).peak("none")
    assert int8 < full
    choice = fit_to_memory(pipe, free_bytes=(int8 + full) // 2 + MARGIN_BYTES, device="cpu", **call)
    assert (choice.quantization, choice.offload) == ("int8", "none")
    assert type(pipe.transformer.head.weight).__name__ == "Int8Tensor"
