"""Windows (and macOS) portability: file names, path lengths, local paths vs hub names, console encodings, and a
scan of the repository for what does not run there (docs/usage.md, "Windows")."""

from __future__ import annotations

import ast
import io
import re
import sys
from pathlib import Path

import pytest

from vpg_pipelines import cli, paths
from vpg_pipelines.evaluation.protocols.vbench import read_prompt_list
from vpg_pipelines.evaluation.run_folder import ChunkWriter, RunFolder, output_path_problem
from vpg_pipelines.paths import WINDOWS_MAX_PATH, file_name_problem, looks_like_local_path, path_length_problem

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("vpg_pipelines", "comfy_nodes", "benchmarks", "scripts", "training")
           for p in sorted((REPO / folder).rglob("*.py"))]


@pytest.mark.parametrize("name, windows_problem", [
    ("a red cat-0.mp4", None),
    ("what is it?-0.mp4", "'?'"),
    ('a "quoted" cat-0.mp4', "'\"'"),
    ("10:30 am-0.mp4", "':'"),
    ("back\\slash.png", "'\\\\'"),
    ("ends with a dot.", "ends with a space or a dot"),
    ("CON.mp4", "Windows device name"),
    ("con", "Windows device name"),
    ("console-0.mp4", None),
])
def test_windows_file_names(name, windows_problem):
    problem = file_name_problem(name, windows=True)
    assert (problem is None) == (windows_problem is None) and (problem is None or windows_problem in problem)
    assert file_name_problem(name, windows=False) is None  # all fine on Linux and macOS


@pytest.mark.parametrize("name", ["", ".", "a/b.mp4", "nul\0.mp4", "x" * 252 + ".mp4", "é" * 128 + ".mp4"])
def test_names_no_system_takes(name):
    assert file_name_problem(name, windows=False) is not None


def test_long_paths_matter_only_on_windows_without_long_paths(monkeypatch, tmp_path):
    long = tmp_path / ("d" * 200) / ("f" * 100)
    assert path_length_problem(long, windows=False) is None
    monkeypatch.setattr(paths, "long_paths_enabled", lambda: True)
    assert path_length_problem(long, windows=True) is None
    monkeypatch.setattr(paths, "long_paths_enabled", lambda: False)
    problem = path_length_problem(long, windows=True)
    assert problem is not None and f"more than Windows' {WINDOWS_MAX_PATH}" in problem and "LongPathsEnabled" in problem
    assert path_length_problem(tmp_path / "short.png", windows=True) is None
    assert paths.ON_WINDOWS == (sys.platform == "win32")


def test_eval_outputs_and_their_staged_copies_are_checked(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ON_WINDOWS", True)
    monkeypatch.setattr(paths, "long_paths_enabled", lambda: False)
    room = WINDOWS_MAX_PATH - len(str(tmp_path.resolve())) - 1
    fits_final = "v" * (room - len("videos/") - 10) + ".mp4"  # the final path fits, the staged copy does not
    assert path_length_problem(tmp_path / "videos" / fits_final) is None
    assert output_path_problem(tmp_path, f"videos/{fits_final}") is not None
    writer = ChunkWriter(RunFolder(tmp_path), tmp_path / ".partial" / "p0-1-abcdef12")
    with pytest.raises(ValueError, match=r"--out .*: the output file 'videos/v+\.mp4': .*LongPathsEnabled"):
        writer.stage(f"videos/{fits_final}")
    assert writer.stage("videos/short.mp4").name == "00000-short.mp4"


def test_vbench_prompts_that_cannot_name_a_file_are_refused(monkeypatch, tmp_path):
    prompts = tmp_path / "all_dimension.txt"
    prompts.write_text("a cat: in space\nwhat is this?\n", encoding="utf-8")
    monkeypatch.setattr(paths, "ON_WINDOWS", False)
    assert read_prompt_list(prompts) == ["a cat: in space", "what is this?"]
    monkeypatch.setattr(paths, "ON_WINDOWS", True)
    with pytest.raises(ValueError, match=r"prompt 'a cat: in space' names its videos .* holds ':', which Windows"):
        read_prompt_list(prompts)
    prompts.write_text("a/b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds '/'"):
        read_prompt_list(prompts)


@pytest.mark.parametrize("text, local", [
    ("C:\\models\\var_d16.pth", True), ("C:/models/var_d16.pth", True), ("D:var.pth", True),
    ("\\\\server\\share\\x.pth", True), ("/home/me/x.pth", True), ("./x.pth", True), ("~/x.pth", True),
    ("var_d16.pth", False), ("FoundationVision/var/var_d16.pth", False),
])
def test_local_paths_are_told_from_hub_names(text, local):
    assert looks_like_local_path(text) is local


def test_a_missing_windows_path_is_not_sent_to_the_hub():
    from vpg_pipelines.loading.hub import resolve_file

    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        resolve_file("C:/no/such/var_d16.pth", "FoundationVision/var")


def test_a_console_in_a_legacy_code_page_prints_what_it_cannot_encode():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252")
    with pytest.raises(UnicodeEncodeError):
        print("FD ↓ Δ", file=stream)
    cli.console_never_fails(stream)
    print("FD ↓ Δ —", file=stream)
    stream.flush()
    assert raw.getvalue().endswith(b"FD ? ? \x97\n")  # the dash is in cp1252 (0x97), the arrow and delta not
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    cli.console_never_fails(utf8)
    assert utf8.errors == "strict"  # UTF-8 streams are left alone


def test_the_cli_sets_up_its_console(monkeypatch):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    monkeypatch.setattr(sys, "stdout", stream)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert stream.errors == "replace"


# -- what does not run on Windows, in the repository's code ---------------------------------------------------
def _calls(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, ast.Call))


def _text_mode(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return not (isinstance(mode, ast.Constant) and "b" in str(mode.value))


def test_text_files_name_their_encoding():
    """Windows reads and writes text in the ANSI code page unless told: every text-mode ``open`` /
    ``read_text`` / ``write_text`` in the repository's code says ``encoding=``."""
    missing = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            texty = name in ("read_text", "write_text") or (name == "open" and isinstance(func, ast.Name)
                                                             and _text_mode(call))
            if texty and not any(k.arg == "encoding" for k in call.keywords):
                missing.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert not missing, f"text I/O without encoding=: {missing}"


POSIX_ONLY = {
    r"\bimport fcntl\b|\bfrom fcntl\b": "fcntl",
    r"\bos\.fork\(|get_context\(\"fork\"\)": "fork-only multiprocessing",
    r"\bos\.rename\(": "os.rename (use os.replace: the same everywhere, and atomic onto an existing file)",
    r"signal\.SIG(?!INT\b)[A-Z]+": "signals other than SIGINT",
    r"os\.(getuid|geteuid|getpgid|setsid|killpg|sysconf)\(": "POSIX-only os calls",
}


def test_the_package_and_node_pack_use_nothing_posix_only():
    found = []
    for path in SOURCES:
        relative = path.relative_to(REPO).as_posix()
        if relative == "benchmarks/common.py":
            continue  # reads /proc and sysconf for the CPU memory benchmarks, with a clear error off Linux
        text = path.read_text(encoding="utf-8")
        for pattern, what in POSIX_ONLY.items():
            found += [f"{relative}: {what}" for _ in re.finditer(pattern, text)]
        if "/proc/" in text and relative.startswith(("vpg_pipelines/", "comfy_nodes/")):
            found.append(f"{relative}: /proc")
    assert not found, found
