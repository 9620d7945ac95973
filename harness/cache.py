"""Where downloads, extracted kernels, images and keys live: outside the repo, shared by runs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """HARNESS_CACHE, else $XDG_CACHE_HOME/harness, else ~/.cache/harness."""
    explicit = os.environ.get("HARNESS_CACHE")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "harness"
    base.mkdir(parents=True, exist_ok=True)
    return base


def secret(cache: Path, name: str, size: int = 32) -> bytes:
    """A random per-cache secret, made once with mode 0600 (seeds for derived keys)."""
    path = cache / "keys" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(size))
        os.replace(path.with_suffix(".tmp"), path)
    return path.read_bytes()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
