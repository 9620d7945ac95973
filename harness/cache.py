"""Where downloads, extracted kernels, images and keys live: outside the repo, shared by runs."""

from __future__ import annotations

import os
from pathlib import Path

from harness.files import write_private


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
        write_private(path, os.urandom(size))
    return path.read_bytes()
