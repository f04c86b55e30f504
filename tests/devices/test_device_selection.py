"""Device selection, the constraints table, the savers per device and free memory, with device availability
mocked: CUDA (NVIDIA), ROCm (a HIP build answering to ``torch.cuda``), Intel XPU, Apple MPS, the CPU."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from vpg_pipelines import cli, devices
from vpg_pipelines.devices import (
    CONSTRAINTS,
    PREFERENCE,
    DeviceMemory,
    check_saver,
    constraints,
    default_dtype,
    device_memory,
    pick_device,
    platform,
    savers,
)
from vpg_pipelines.memory import choose, offload
from vpg_pipelines.memory.choose import MARGIN_BYTES, fit_to_memory


@pytest.fixture
def machine(monkeypatch):
    """Set which device types this "machine" has: ``machine("cuda", "mps", hip="6.2", count=2)``."""

    def have(*types: str, hip: str | None = None, count: int = 1, macos14: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: "cuda" in types)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if "cuda" in types else 0)
        monkeypatch.setattr(torch.xpu, "is_available", lambda: "xpu" in types)
        monkeypatch.setattr(torch.xpu, "device_count", lambda: count if "xpu" in types else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: "mps" in types)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14 or major < 14)
        monkeypatch.setattr(torch.version, "hip", hip)

    return have


# -- which device ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("types, picked", [
    (("cuda", "xpu", "mps"), "cuda"), (("xpu", "mps"), "xpu"), (("mps",), "mps"), ((), "cpu"),
])
def test_the_first_available_device_in_order(machine, types, picked):
    machine(*types)
    assert pick_device() == torch.device(picked)
    assert PREFERENCE == ("cuda", "xpu", "mps", "cpu")


def test_rocm_answers_to_cuda_and_has_its_own_constraints(machine):
    machine("cuda", hip="6.2")
    device = pick_device()
    assert device.type == "cuda" and platform(device) == "rocm" and constraints(device) is CONSTRAINTS["rocm"]
    machine("cuda")
    assert platform(device) == "cuda" and constraints(device) is CONSTRAINTS["cuda"]


def test_the_choice_can_be_overridden(machine):
    machine("cuda", "mps", count=2)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("mps") == torch.device("mps")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device(torch.device("cuda", 0)) == torch.device("cuda:0")


@pytest.mark.parametrize("name, message", [
    ("xpu", "--device 'xpu' was given but this machine has no XPU (Intel) device; available here: cuda, cpu"),
    ("cuda:2", "--device 'cuda:2': there are 1 cuda device(s), numbered from 0"),
    ("tpu", "--device 'tpu' is not a device"),
    ("hpu", "--device 'hpu': this package runs on cuda, xpu, mps, cpu"),
])
def test_a_device_that_is_not_here_is_refused_by_name(machine, name, message):
    machine("cuda")
    with pytest.raises(ValueError) as err:
        pick_device(name, "--device")
    assert str(err.value).startswith(message)


def test_no_mps_names_apple_silicon(machine):
    machine()
    with pytest.raises(ValueError, match=r"no MPS \(Apple Silicon\) device; available here: cpu"):
        pick_device("mps", "--device")
    with pytest.raises(ValueError, match=r"no CUDA \(NVIDIA\) or ROCm \(AMD\) device"):
        pick_device("cuda", "--device")


# -- what it can do --------------------------------------------------------------------------------------------
def test_the_table_has_a_row_for_every_platform():
    assert set(CONSTRAINTS) >= {*PREFERENCE, "rocm"}
    assert not CONSTRAINTS["mps"].float64 and not CONSTRAINTS["xpu"].float64
    assert all(CONSTRAINTS[p].float64 for p in ("cuda", "rocm", "cpu"))
    assert [p for p in PREFERENCE if CONSTRAINTS[p].streams] == ["cuda", "xpu"] and CONSTRAINTS["rocm"].streams
    assert [p for p in CONSTRAINTS if CONSTRAINTS[p].verified] == ["cpu", "meta"]


@pytest.mark.parametrize("device, expected", [
    ("cuda", ("none", "int8", "nf4", "fp8")), ("xpu", ("none", "int8", "nf4")), ("mps", ("none", "int8")),
    ("cpu", ("none", "int8", "fp8")),
])
def test_savers_per_device(machine, device, expected):
    machine()
    assert savers(device) == expected
    for saver in ("none", "int8", "nf4", "fp8"):
        if saver in expected:
            check_saver(saver, device)
        else:
            with pytest.raises(ValueError, match=f"`quantization` '{saver}' is not available on '{device}'"):
                check_saver(saver, device)


def test_rocm_savers(machine):
    machine("cuda", hip="6.2")
    assert savers("cuda") == ("none", "int8", "nf4", "fp8")
    with pytest.raises(ValueError, match=r"'nf4' is not available on 'mps' \(MPS \(Apple Silicon\)\); use 'int8'"):
        check_saver("nf4", "mps")


def test_default_dtypes_per_device(machine):
    machine("mps", macos14=True)
    for gpu_dtype in (torch.float16, torch.bfloat16):
        assert default_dtype(gpu_dtype, "cpu") is None
        for device in ("cuda", "xpu", "mps"):
            assert default_dtype(gpu_dtype, device) == gpu_dtype
    machine("mps", macos14=False)  # bf16 on MPS needs macOS 14: float32 instead, fp16 stays
    assert not constraints("mps").bf16
    assert default_dtype(torch.bfloat16, "mps") == torch.float32
    assert default_dtype(torch.float16, "mps") == torch.float16


def test_group_offload_uses_streams_only_where_they_exist(machine, monkeypatch):
    machine("cuda", "xpu", "mps")
    for device, stream in (("cuda", True), ("xpu", True), ("mps", False), ("cpu", False)):
        seen: dict = {}
        pipe = SimpleNamespace(enable_group_offload=seen.update, vae=SimpleNamespace(to=seen.setdefault))
        offload.apply_offload(pipe, "group", device)
        assert seen["use_stream"] is stream and seen["onload_device"] == torch.device(device), device


# -- free memory -----------------------------------------------------------------------------------------------
@pytest.fixture
def accelerator(monkeypatch):
    """``torch.accelerator`` reporting 6 GiB free of 24 GiB, 1 GiB reserved and 0.25 GiB of it allocated."""
    calls = []
    gib = 1024**3

    def current(check_available=False):
        return torch.device(accelerator_type[0])

    accelerator_type = ["cuda"]
    monkeypatch.setattr(torch.accelerator, "current_accelerator", current)
    monkeypatch.setattr(torch.accelerator, "get_memory_info", lambda index: calls.append(index) or (6 * gib, 24 * gib))
    monkeypatch.setattr(torch.accelerator, "memory_reserved", lambda index: gib)
    monkeypatch.setattr(torch.accelerator, "memory_allocated", lambda index: gib // 4)
    return SimpleNamespace(calls=calls, type=accelerator_type, gib=gib)


@pytest.mark.parametrize("device_type", ["cuda", "xpu"])
def test_free_memory_through_torch_accelerator(accelerator, device_type):
    accelerator.type[0] = device_type
    gib = accelerator.gib
    memory = device_memory(f"{device_type}:1")
    assert memory == DeviceMemory(free=6 * gib + gib * 3 // 4, total=24 * gib) and accelerator.calls == [1]


def test_free_memory_without_torch_accelerator_uses_the_device_module(monkeypatch):
    monkeypatch.delattr(torch.accelerator, "get_memory_info")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (100, 400))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 10)
    assert device_memory("cuda:0") == DeviceMemory(free=120, total=400)


def test_free_memory_on_mps_is_metals_working_set_less_our_tensors(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 21 * 1024**3)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 5 * 1024**3)
    assert device_memory("mps") == DeviceMemory(free=16 * 1024**3, total=21 * 1024**3)


def test_no_free_memory_on_the_cpu_and_fit_to_memory_says_so():
    from vpg_pipelines import load_demo_pipeline

    assert device_memory("cpu") is None
    with pytest.raises(ValueError, match=r"`free_bytes` is needed on 'cpu' \(CPU\)"):
        fit_to_memory(load_demo_pipeline(), device="cpu", prompt=["plant"])


def test_offload_auto_plans_against_the_devices_free_memory(monkeypatch, capsys):
    """``vpg generate --offload auto`` asks the device for its free memory (here a mocked accelerator with room
    for offloading only) and applies what the planner picks."""
    from vpg_pipelines import load_demo_pipeline

    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": ["plant"], "vpg_scale": 1.5}
    plan = pipe.estimate_memory(**call)
    free = (plan.peak("group") + plan.peak("none")) // 2 + MARGIN_BYTES
    asked = []
    fake = lambda device: asked.append(torch.device(device)) or DeviceMemory(free, 2 * free)  # noqa: E731
    monkeypatch.setattr(cli, "device_memory", fake)
    monkeypatch.setattr(choose, "device_memory", fake)
    args = argparse.Namespace(quantization=None, offload="auto", kv_cache_offload=False)
    cli._place(pipe, args, torch.device("cpu"), call)
    assert asked and all(d == torch.device("cpu") for d in asked)
    out = capsys.readouterr().out
    assert "memory: planned peak" in out and ("offload model" in out or "offload group" in out)


def test_the_cli_refuses_a_device_this_machine_lacks(machine, tmp_path, capsys):
    machine()
    assert cli.main(["generate", "--model", "demo", "--prompt", "plant", "--device", "mps",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "--device 'mps' was given but this machine has no MPS (Apple Silicon) device" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_a_device_type_outside_the_table_gets_only_what_plain_pytorch_ops_need():
    """ComfyUI may compute on a device this package never picks itself (e.g. DirectML's ``privateuseone``):
    no float64 (reductions go to the host), no streams, no bitsandbytes or float8, int8 only."""
    entry = constraints(torch.device("privateuseone"))
    assert entry is devices.OTHER and not entry.float64 and not entry.streams
    assert savers("privateuseone") == ("none", "int8")
