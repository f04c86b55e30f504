"""Resolving a checkpoint argument: a local path, or an official file name on the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download

from ..paths import looks_like_local_path


def resolve_file(name: str | Path, default_repo: str) -> Path:
    """Return a local path for ``name``.

    ``name`` is a local file (or folder), ``"<owner>/<repo>/<filename>"`` or a bare official file
    name that lives in ``default_repo``; hub files are fetched with ``huggingface_hub`` (cached; works
    offline once cached).
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    text = str(name)
    if looks_like_local_path(text):  # C:\ or C:/ on Windows too, never sent to the hub as a repo name
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    parts = text.split("/")
    repo, filename = (default_repo, text) if len(parts) < 3 else ("/".join(parts[:2]), "/".join(parts[2:]))
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as err:
        raise FileNotFoundError(
            f"checkpoint {text!r} is not a local file and could not be fetched from the hub repo "
            f"{repo!r} ({type(err).__name__}: {err})"
        ) from err
