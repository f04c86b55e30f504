"""The loader's word on broken or unsafe files, as a ComfyUI user meets it: a file cut short is called
truncated or corrupt, a pickle that would run code names the call it was stopped from making, and the
bundled demo refuses a `vae_file` it cannot use. Every message carries the node's title and the widget."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from comfy_nodes import host
from comfy_nodes.files import pickle_calls
from comfy_nodes.loader import VPGModelLoader
from comfy_nodes.sources import DEMO_CHOICE
from tests.helpers.comfy import run
from tests.helpers.shared import shared_path

SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # posix.system on Linux and macOS, nt.system on Windows
WIDGETS = dict(text_encoder="none", dtype="fp32", quantization="none", offload="auto")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A models/vpg folder with the tiny official VAR pair under the official names (+ its sidecar)."""
    root = shared_path("parity", "var")
    shutil.copy(root / "var.safetensors", tmp_path / "var_d16.safetensors")
    shutil.copy(root / "vqvae.safetensors", tmp_path / "vae_ch160v4096z32.safetensors")
    shutil.copy(root / "config.json", tmp_path / "var_d16.json")
    monkeypatch.setattr(host, "folder_list", lambda folder: [tmp_path] if folder == host.MODELS else [])
    monkeypatch.chdir(tmp_path)  # a payload that ran would create its file here
    yield tmp_path
    assert not (tmp_path / "PWNED_BY_PICKLE").exists(), "the pickle's payload ran"


def load(model_name, vae_file):
    return run(VPGModelLoader, model_name=model_name, vae_file=vae_file, **WIDGETS)[0]


def test_the_intact_pair_loads(models):
    assert load("var_d16.safetensors", "vae_ch160v4096z32.safetensors").kind.name == "var"


@pytest.mark.parametrize("which", ["model", "vae"])
def test_a_truncated_safetensors_file_is_called_truncated(models, which):
    name = "var_d16.safetensors" if which == "model" else "vae_ch160v4096z32.safetensors"
    data = (models / name).read_bytes()
    (models / name).write_bytes(data[: len(data) * 2 // 3])
    widget = "model_name" if which == "model" else "vae_file"
    with pytest.raises(ValueError, match=rf"^VPG Load Model: `{widget}` '{name}' is truncated or corrupt: it holds "
                                         rf"{len(data) * 2 // 3} bytes but its header describes {len(data)}\. "
                                         "Download it again"):
        load("var_d16.safetensors", "vae_ch160v4096z32.safetensors")


def test_a_truncated_torch_zip_is_called_truncated(models):
    torch.save({"w": torch.zeros(64)}, models / "var_d20.pth")
    data = (models / "var_d20.pth").read_bytes()
    (models / "var_d20.pth").write_bytes(data[:-40])
    with pytest.raises(ValueError, match="^VPG Load Model: `model_name` 'var_d20.pth' is truncated or corrupt: it is a "
                                         "PyTorch zip archive without its end"):
        load("var_d20.pth", "vae_ch160v4096z32.safetensors")


@pytest.mark.parametrize("layout", ["torch zip", "raw pickle"])
def test_a_pickle_that_would_run_code_names_the_call_it_blocked(models, layout):
    path = models / "var_d16.pth"
    if layout == "torch zip":
        torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path, pickle_module=pickle)
    else:  # what pickle.dump writes: torch cannot list its globals, the pack reads them from the opcodes
        path.write_bytes(pickle.dumps({"weight": 1.0, "payload": _Payload()}))
    assert pickle_calls(path) == [SYSTEM]
    with pytest.raises(ValueError) as err:
        load("var_d16.pth", "vae_ch160v4096z32.safetensors")
    assert str(err.value) == (
        f"VPG Load Model: `model_name` 'var_d16.pth' is a pickle that would call `{SYSTEM}` when loaded; "
        "torch.load(weights_only=True) blocked it and nothing in it ran. Use the official file, or a .safetensors "
        "copy of a checkpoint you trust.")


def test_the_vae_file_of_a_refused_pair_is_named(models):
    (models / "vae.pth").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match=rf"^VPG Load Model: `vae_file` 'vae.pth' is a pickle that would call "
                                         rf"`{SYSTEM}`"):
        load("var_d16.safetensors", "vae.pth")


def test_the_bundled_demo_refuses_a_vae_file(models):
    with pytest.raises(ValueError, match="^VPG Load Model: the bundled demo brings its own VAE and cannot use "
                                         "`vae_file` 'vae_ch160v4096z32.safetensors'; set `vae_file` to none$"):
        load(DEMO_CHOICE, "vae_ch160v4096z32.safetensors")
