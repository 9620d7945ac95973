"""Where an internal error's traceback goes: a new file under the cache's crashes/ (or the temporary
directory), so the user sees one line and a bug report has the whole story."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import traceback
from pathlib import Path

from harness.cache import cache_dir


def report() -> Path:
    """The exception being handled, with its traceback, in a new file under the cache's crashes/."""
    text = traceback.format_exc()
    for folder in (_folder(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f"harness-crash-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-", suffix=".txt", dir=folder
            )
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return Path(name)
        except OSError:
            continue
    return Path("(nowhere: no writable directory)")


def _folder() -> Path:
    try:
        return cache_dir() / "crashes"
    except OSError:
        return Path(tempfile.gettempdir())
