""".deb files from the inside: a package's data, read as it streams (kernels unpack theirs, kselftest
takes the kernel tree out of linux-source)."""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import zstandard
from debian.debfile import DebFile

from harness.errors import InfraError


@contextlib.contextmanager
def data_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """Stream-open a .deb's data.tar.* (python-debian would shell out to unzstd and buffer it all)."""
    try:
        ar = DebFile(str(deb))
    except Exception as e:  # python-debian raises several unrelated types for a bad archive
        raise InfraError(f"{deb}: not a Debian package: {e}") from None
    name = next((n for n in ar.getnames() if n.startswith("data.tar")), None)
    if name is None:
        raise InfraError(f"{deb}: no data.tar member")
    member = ar.getmember(name)
    try:
        if name.endswith(".zst"):
            stream: Any = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], member), read_across_frames=True)
            compression = ""
        else:
            stream, compression = member, name[len("data.tar.") :]
        if compression not in ("", "xz", "gz", "bz2"):
            raise InfraError(f"{deb}: {name} uses a compression the harness cannot read")
        with tarfile.open(fileobj=stream, mode=f"r|{compression}") as tar:  # type: ignore[call-overload]
            yield tar
    finally:
        member.close()
