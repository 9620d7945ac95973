"""Host tools a matrix asks for that the host may lack: an older gcc to build an older kernel tree.

Debian packages each gcc major as `gcc-N`; the releases before bookworm carry the older ones
(bullseye: gcc-9, gcc-10). A missing one is installed with apt itself, as root, from the suite
that has it on the same mirror, through a private source list and private apt state under the
cache: the host's own apt configuration is never edited. Not root: one line with the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.debian.archive import DEFAULT_KEYRING
from harness.errors import InfraError, UserError

# Where each compiler Debian no longer ships in bookworm lives on today's mirror.
SUITE_OF = {"gcc-9": "bullseye", "gcc-10": "bullseye"}
COMPILER = re.compile(r"^gcc(-\d{1,2})?$")


def ensure_compiler(name: str, mirror: Callable[[], str], cache: Path, log: Callable[[str], None]) -> str:
    """The path of compiler `name` (gcc or gcc-N), installing it first if the host lacks it."""
    found = shutil.which(name)
    if found:
        return found
    suite = SUITE_OF.get(name, "bookworm")
    if os.geteuid() != 0:
        raise UserError(
            f"compiler {name} is not installed; as root run `harness` once, or install {name} from "
            f"Debian {suite} (apt-get install {name}, with {suite} in a source list)"
        )
    log(f"installing {name} from Debian {suite} (apt, with a private source list in {cache / 'apt'})")
    apt(
        cache / "apt",
        f"deb {mirror()} {suite}",
        ["install", "-y", "-q", "--no-install-recommends", name],
        f"{name} from {suite}",
    )
    found = shutil.which(name)
    if not found:
        raise InfraError(f"apt installed {name} from {suite}, yet there is no {name} on PATH")
    return found


def apt(folder: Path, source: str, step: list[str], what: str, cwd: Path | None = None) -> None:
    """`apt-get update`, then `apt-get STEP`, with `source` ("deb MIRROR SUITE" or "deb-src ...") as
    the only source list and apt's lists and downloads in `folder`; InfraError naming `what` and
    apt's last line when either fails. The packages are checked against the archive keyring."""
    kind, rest = source.split(" ", 1)
    (folder / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "sources.list").write_text(f"{kind} [signed-by={DEFAULT_KEYRING}] {rest} main\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["update", "-q"], step):
        proc = subprocess.run([*apt_argv(folder), *argv], capture_output=True, text=True, env=env, cwd=cwd)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no message"]
            raise InfraError(f"apt-get {argv[0]} for {what} failed: {last[0]}")


def apt_argv(folder: Path) -> list[str]:
    """apt-get reading only the private source list and keeping its lists and downloads in `folder`;
    it installs into the host's own dpkg database, as any apt-get install does."""
    return [
        "apt-get",
        "-o",
        f"Dir::Etc::SourceList={folder / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={folder / 'lists'}",
        "-o",
        f"Dir::Cache={folder}",
        "-o",
        f"Dir::Cache::Archives={folder / 'archives'}",
        "-o",
        "APT::Get::List-Cleanup=false",
    ]
