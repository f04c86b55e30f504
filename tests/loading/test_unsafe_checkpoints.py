"""A pickle that would run code is refused by every loader with our message, and its payload never runs.

torch's own message for such a file advises retrying with ``weights_only=False`` (which would run the
payload); every loader must say instead what was blocked, that nothing ran, and what a safe file is.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tests.helpers.shared import shared_path
from vpg_pipelines import VPGInfinityPipeline, VPGVARPipeline
from vpg_pipelines.cli import main
from vpg_pipelines.loading.checkpoint import UnsafeCheckpointError, read_state_dict

SYSTEM = f"{os.system.__module__}.{os.system.__name__}"  # posix.system on Linux and macOS, nt.system on Windows


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture
def evil(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the payload would create its file here
    path = tmp_path / "var_d16.pth"  # an official name, so the loaders take it for a VAR checkpoint
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path, pickle_module=pickle)
    yield path
    assert not (tmp_path / "PWNED_BY_PICKLE").exists(), "the pickle's payload ran"


def _assert_our_message(text: str) -> None:
    assert f"`{SYSTEM}`" in text and "would run code" in text and "nothing in the file ran" in text
    assert ".safetensors" in text and "vpg convert" in text
    assert "will likely succeed" not in text  # torch's advice to retry without weights_only


def test_read_state_dict_names_the_blocked_global_and_drops_torchs_advice(evil):
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(evil)
    _assert_our_message(str(info.value))
    assert info.value.blocked == [SYSTEM] and info.value.path == evil
    assert info.value.__cause__ is None and info.value.__context__ is None  # torch's text is not chained either


def test_pipelines_refuse_it(evil):
    root = shared_path("parity", "var")
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        VPGVARPipeline.from_official(evil, root / "vqvae.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        VPGVARPipeline.from_official(root / "var.safetensors", evil)
    infinity = shared_path("parity", "infinity")
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        VPGInfinityPipeline.from_official(evil, infinity / "vae.safetensors")


def test_cli_refuses_it(evil, capsys):
    assert main(["generate", "--model", str(evil), "--vae", str(evil), "--prompt", "0", "--out", "x.png"]) == 2
    _assert_our_message(capsys.readouterr().err)
