"""Fill a ``models/vpg`` folder for the headless ComfyUI run (no downloads possible there).

* ``var_d16.pth`` + ``vae_ch160v4096z32.pth`` + ``var_d16.json``: a **stand-in** under the official
  file names: the tiny official-format VAR of ``shared/parity/var`` (10 classes, 4 scales) saved as
  plain ``.pth`` state dicts, with the sidecar config its non-standard sizes need. It exercises the
  official-pair loading path of the shipped VAR workflow; it is not VAR-d16.
* ``broken/model_index.json``: a folder of a pipeline class the pack cannot load (negative test).

    python tests/comfy/make_standin_models.py WORK/models/vpg
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(target: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    shared = Path(os.environ.get("VPG_SHARED", repo.parent / "shared")) / "parity" / "var"
    target.mkdir(parents=True, exist_ok=True)
    torch.save(load_file(shared / "var.safetensors"), target / "var_d16.pth")
    torch.save(load_file(shared / "vqvae.safetensors"), target / "vae_ch160v4096z32.pth")
    shutil.copy(shared / "config.json", target / "var_d16.json")
    (target / "broken").mkdir(exist_ok=True)
    (target / "broken" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    print("\n".join(sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
