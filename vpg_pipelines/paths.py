"""File names and paths that work on every system the package runs on, Windows included.

Windows refuses ``< > : " / \\ | ? *`` and control characters in a file name, a name ending in a space or a
dot, and the device names (``CON``, ``NUL``, ``COM1`` ...), and limits a path to 259 characters unless long
paths are enabled (``LongPathsEnabled`` in the registry). Reasons and the rest of the Windows audit:
``docs/usage.md``, "Windows".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PureWindowsPath

if sys.platform == "win32":  # the long-path switch lives in the registry
    import winreg

ON_WINDOWS = sys.platform == "win32"
WINDOWS_FORBIDDEN = '<>:"/\\|?*'
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
WINDOWS_MAX_PATH = 259
"""Characters of a full path Windows accepts without long paths (``MAX_PATH`` 260 less the final NUL)."""
MAX_NAME_BYTES = 255
"""A file name's limit on the common file systems (ext4: 255 bytes; NTFS: 255 UTF-16 units)."""


def file_name_problem(name: str, windows: bool | None = None) -> str | None:
    """Why ``name`` cannot be one file name here (``windows``, default: on Windows: under Windows' rules too),
    or ``None``."""
    windows = ON_WINDOWS if windows is None else windows
    if name in ("", ".", ".."):
        return "is empty or a folder reference"
    if "/" in name or "\0" in name:
        return "holds '/' or a NUL character"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES or len(name.encode("utf-16-le")) // 2 > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if windows:
        bad = sorted({c for c in name if c in WINDOWS_FORBIDDEN or ord(c) < 32})
        if bad:
            return "holds " + " ".join(repr(c) for c in bad) + ", which Windows refuses in file names"
        if name[-1] in " .":
            return "ends with a space or a dot, which Windows drops"
        if name.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
            return "is a Windows device name"
    return None


def long_paths_enabled() -> bool:
    """Whether paths may exceed :data:`WINDOWS_MAX_PATH` here (always, off Windows)."""
    if not ON_WINDOWS:
        return True
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return False


def path_length_problem(path: str | os.PathLike, windows: bool | None = None) -> str | None:
    """Why the absolute ``path`` is too long to write here (``windows``, default: on Windows, without long
    paths), or ``None``."""
    if not (ON_WINDOWS if windows is None else windows) or long_paths_enabled():
        return None
    full = os.path.abspath(path)
    if len(full) > WINDOWS_MAX_PATH:
        return (f"{full[:60]}... is {len(full)} characters, more than Windows' {WINDOWS_MAX_PATH} without long paths "
                "(enable LongPathsEnabled, or choose a shorter folder)")
    return None


def looks_like_local_path(text: str) -> bool:
    """Whether ``text`` names a local file rather than a hub file (``owner/repo/file`` or a bare name):
    absolute on this system, relative with ``.`` / ``~``, a Windows drive or a backslash."""
    return (text.startswith(("/", ".", "~")) or "\\" in text or bool(PureWindowsPath(text).drive)
            or Path(text).is_absolute())
