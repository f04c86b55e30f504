"""Fill ComfyUI model folders with tiny models for smoke runs (no downloads possible there).

    python tests/comfy/make_standin_models.py COMFYUI/models/vpg          # everything below
    python tests/comfy/make_standin_models.py COMFYUI/models/vpg --tiny   # only the two tiny folders

Needs the parity fixtures of ``shared/parity`` (``VPG_SHARED`` or ``../shared``). Writes into
``models/vpg``:

* ``vpg-tiny-infinity/`` and ``vpg-tiny-infinitystar/``: saved pipeline folders (``save_pretrained``)
  of the tiny official-format Infinity / InfinityStar fixtures with a random two-layer T5 and a
  word-level tokenizer: what ``workflows/vpg_infinity_tiny.json`` and ``vpg_infinitystar_tiny.json``
  load. They only prove the graph runs; their pictures are noise-like.
* **stand-ins under the official file names**, so the official workflows' loading path runs:
  ``var_d16.pth`` + ``vae_ch160v4096z32.pth``; ``infinity_2b_reg.pth`` + ``infinity_vae_d32reg.pth``;
  ``infinitystar_8b_720p_weights/`` (a shard folder with its ``*.index.json``) + ``infinitystar_videovae.pth``;
  ``infinitystar_8b_480p_weights/`` (the 480p fixture of ``tests/fixtures``) and ``InfinityStarInteract_24K_iters/``
  (the InfinityStar fixture in the Interact fixture's settings), which use the same video VAE;
  each transformer with the ``<name>.json`` sidecar its non-standard sizes need. They are the tiny
  fixtures, not the released models.
* ``../text_encoders/flan-t5-xl/`` (a random T5 of the tiny Infinity's 128 channels, standing in for
  google/flan-t5-xl) and ``../text_encoders/tiny-t5-d64/`` (64 channels, for the tiny InfinityStar).
* ``broken/model_index.json``: a folder of a pipeline class the pack cannot load (negative test).
* ``var_d24_truncated.safetensors``: the tiny VAR cut in half, as an interrupted download leaves it, and
  ``var_d30_pickle.pth``: a raw pickle that would call ``os.system`` (an ``echo``) if it were ever unpickled
  unsafely (negative tests: the loader must call the first truncated and name the call of the second).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# the repository root for `vpg_pipelines` when it is not installed (a plain clone in custom_nodes/)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vpg_pipelines import VPGInfinityPipeline, VPGInfinityStarPipeline  # noqa: E402
from vpg_pipelines.testing import STAR_PARITY_ARGS, tiny_t5  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_INFINITY = "vpg-tiny-infinity"
TINY_INFINITY_STAR = "vpg-tiny-infinitystar"


class _Payload:
    """Pickles as a call to ``os.system``: what a malicious checkpoint holds (harmless here: an echo)."""

    def __reduce__(self):
        return (os.system, ("echo VPG-PICKLE-PAYLOAD-RAN",))


def shared_root() -> Path:
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("VPG_SHARED", repo.parent / "shared")) / "parity"




def tiny_infinity():
    """The Infinity fixture as a pipeline with a tiny T5 (default size: the fixture's 256 x 256)."""
    root = shared_root() / "infinity"
    config = json.loads((root / "config.json").read_text())
    pipe = VPGInfinityPipeline.from_official(str(root / "infinity.safetensors"), str(root / "vae.safetensors"),
                                             config=config)
    encoder, tokenizer = tiny_t5(pipe.transformer.config.text_channels)
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    return pipe


def star_config() -> dict:
    config = json.loads((shared_root() / "infinity_star" / "config.json").read_text())
    config["args"] = {**config.get("args", {}), **STAR_PARITY_ARGS}
    return config


def tiny_infinity_star():
    """The InfinityStar fixture as a pipeline with a tiny T5 (default size 192 x 336, up to 81 frames)."""
    root = shared_root() / "infinity_star"
    pipe = VPGInfinityStarPipeline.from_official(root / "infinity_star.safetensors", root / "videovae.safetensors",
                                                 config=star_config())
    encoder, tokenizer = tiny_t5(pipe.transformer.config.text_channels)
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    return pipe


def star480_config() -> dict:
    """The 480p fixture's settings (``tests/fixtures/infinity_star_480p``: 0.06M budget, 192 x 336)."""
    config = json.loads((FIXTURES / "infinity_star_480p" / "config.json").read_text())
    return {"args": config["args"], "text_maxlen": config["text_maxlen"]}


def interact_config() -> dict:
    """The Interact fixture's settings (``tests/fixtures/infinity_star_interact``, on the InfinityStar weights)."""
    config = json.loads((FIXTURES / "infinity_star_interact" / "config.json").read_text())
    return {"args": config["args_overrides"], "text_maxlen": config["text_maxlen"]}


def write_shards(checkpoint: Path, folder: Path) -> None:
    """``checkpoint`` as a transformers-style shard folder (two shards and the ``*.index.json``), as released."""
    folder.mkdir(exist_ok=True)
    state = load_file(checkpoint)
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map |= dict.fromkeys(part, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_tiny(target: Path) -> None:
    tiny_infinity().save_pretrained(target / TINY_INFINITY)
    tiny_infinity_star().save_pretrained(target / TINY_INFINITY_STAR)


def write_official_standins(target: Path) -> None:
    parity = shared_root()
    var = parity / "var"
    torch.save(load_file(var / "var.safetensors"), target / "var_d16.pth")
    torch.save(load_file(var / "vqvae.safetensors"), target / "vae_ch160v4096z32.pth")
    shutil.copy(var / "config.json", target / "var_d16.json")

    inf = parity / "infinity"
    torch.save(load_file(inf / "infinity.safetensors"), target / "infinity_2b_reg.pth")
    torch.save(load_file(inf / "vae.safetensors"), target / "infinity_vae_d32reg.pth")
    shutil.copy(inf / "config.json", target / "infinity_2b_reg.json")

    star = parity / "infinity_star"
    write_shards(star / "infinity_star.safetensors", target / "infinitystar_8b_720p_weights")
    torch.save(load_file(star / "videovae.safetensors"), target / "infinitystar_videovae.pth")
    (target / "infinitystar_8b_720p_weights.json").write_text(json.dumps(star_config(), indent=1))
    # the 480p and Interact checkpoints use the same video VAE; their names pick their scripts (variant auto)
    write_shards(FIXTURES / "infinity_star_480p" / "infinity_star_480p.safetensors",
                 target / "infinitystar_8b_480p_weights")
    (target / "infinitystar_8b_480p_weights.json").write_text(json.dumps(star480_config(), indent=1))
    write_shards(star / "infinity_star.safetensors", target / "InfinityStarInteract_24K_iters")
    (target / "InfinityStarInteract_24K_iters.json").write_text(json.dumps(interact_config(), indent=1))

    encoders = target.parent / "text_encoders"
    for name, channels in (("flan-t5-xl", 128), ("tiny-t5-d64", 64)):
        encoder, tokenizer = tiny_t5(channels)
        encoder.save_pretrained(encoders / name)
        tokenizer.save_pretrained(encoders / name)

    data = (var / "var.safetensors").read_bytes()
    (target / "var_d24_truncated.safetensors").write_bytes(data[: len(data) // 2])
    shutil.copy(var / "config.json", target / "var_d24_truncated.json")
    (target / "var_d30_pickle.pth").write_bytes(pickle.dumps(_Payload()))

    (target / "broken").mkdir(exist_ok=True)
    (target / "broken" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="the models/vpg folder")
    ap.add_argument("--tiny", action="store_true", help="only the two tiny saved pipeline folders")
    args = ap.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    write_tiny(args.target)
    if not args.tiny:
        write_official_standins(args.target)
    root = args.target.parent
    print("\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())))


if __name__ == "__main__":
    main()
