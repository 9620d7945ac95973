"""Writing files so that a reader (another run, CI, a killed harness's successor) never sees half of one.

One writer for the whole harness: run reports, cache entries, keys. Failures are InfraError naming
the path and the errno, in one line; the previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import tempfile
import zlib
from pathlib import Path

from harness.errors import InfraError, UserError


def os_failure(action: str, path: Path, e: OSError) -> InfraError:
    code = errno.errorcode.get(e.errno, f"errno {e.errno}") if e.errno is not None else type(e).__name__
    reason = e.strerror or str(e)
    return InfraError(f"{path}: {action}: {code} ({reason})".replace("\n", " "))


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is UTF-8) so readers see either the old file or the new one.

    The parent directory is created if needed. `mode` 0o644: reports and cache entries are read by
    CI and other users; keys and secrets use `write_private`.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise os_failure("cannot write", path, e) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    # The rename is already visible to readers; syncing the directory only makes it survive a
    # power cut, and some filesystems refuse fsync on a directory, so failure here is not fatal.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_private(path: Path, data: bytes) -> None:
    """A key or secret: mode 0600 in a 0700 directory, written atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise os_failure("cannot create the directory", path.parent, e) from e
    atomic_write(path, data, 0o600)


def read_text(path: Path, limit: int, what: str) -> str:
    """A text file someone gave the harness (`what`: "matrix file"): at most `limit` bytes of UTF-8,
    or bad input saying why. Read with a bound, so /dev/zero or a runaway file costs `limit` bytes.
    A name ending in .gz is read through gzip (every member), the bound applying to what it holds:
    a small file that would expand without end costs no more."""
    packed = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if packed else open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a {what}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # before OSError: BadGzipFile is one
        raise UserError(f"{path}: not a whole gzip file ({e}); give a {what} the harness wrote") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}; give an existing file") from None
    if len(data) > limit:
        raise UserError(
            f"{path}: {'holds more' if packed else 'larger'} than {_size(limit)}, more than any {what} holds"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.start}); a {what} is UTF-8 text") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
