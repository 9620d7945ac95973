"""The guest's programs: busybox, dropbear and the probe, in one of two builds.

`glibc` (the default): Debian's busybox-static and dropbear-bin from the host, the probe built with
gcc. Bookworm's glibc is built for kernels from 3.2 on, and older ones show it: its static
busybox segfaults at address 0 on 2.6.20, and on 2.6.32, where that busybox runs, the loader of
the dynamically linked dropbear fails ("cannot stat shared object: Invalid argument"), so no
guest comes up (both seen here on ../shared/kernels). For those kernels there is `musl`: all
three built static here with musl-gcc, busybox and dropbear from Debian's own source packages
(fetched and verified by apt through a private source list, patched by dpkg-source), cached by
what they were built from. `auto` takes musl for a kernel older than 3.2, else glibc.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import REPO
from harness.cache.lease import UNLEASED, Leases, locked
from harness.debian import tools
from harness.errors import InfraError, UserError
from harness.kit import image

AUTO, GLIBC, MUSL = "auto", "glibc", "musl"
NAMES = (AUTO, GLIBC, MUSL)
GLIBC_MINIMUM = (3, 2)  # bookworm's glibc is configured with --enable-kernel=3.2
SOURCE_SUITE = "bookworm"
RECIPE = 3  # bump when the build steps below change what they make
GUEST_TESTS = REPO / "guest-tests"  # the probe's sources
KERNEL_HEADERS = (
    Path("/usr/include/linux"),
    Path("/usr/include/asm-generic"),
    Path("/usr/include/mtd"),
    Path("/usr/include/x86_64-linux-gnu/asm"),
)
# The guest's dropbear as /init runs it (-F -E -s): no X11, no login records. Its syslog support
# stays (without it there is no -E), and so does password support (without it there is no -s),
# though Debian's musl has no crypt(): a stub that refuses every password stands in, never called
# since -s turns password logins off.
DROPBEAR_OPTIONS = "#define DROPBEAR_X11FWD 0\n"
CRYPT_STUB = (
    "#include <stddef.h>\nchar *crypt(const char *key, const char *salt) { (void)key; (void)salt; return NULL; }\n"
)
DROPBEAR_CONFIGURE = (
    "--enable-static",
    "--disable-zlib",
    "--disable-lastlog",
    "--disable-utmp",
    "--disable-utmpx",
    "--disable-wtmp",
    "--disable-wtmpx",
    "--disable-pututline",
    "--disable-pututxline",
)


@dataclass(frozen=True)
class Userland:
    name: str  # glibc or musl
    busybox: Path
    dropbear: Path
    probe: Path

    def entries(self, client_public_key: str) -> list[image.Entry]:
        return image.base_entries(self.probe, client_public_key, self.busybox, self.dropbear)


def choose(requested: str, version: tuple[int, ...]) -> tuple[str, str]:
    """The userland a boot uses, and why: `auto` is musl below glibc's minimum kernel, else glibc."""
    if requested != AUTO:
        return requested, "asked for by the matrix"
    if version and version[:2] < GLIBC_MINIMUM:
        return MUSL, f"the kernel is older than glibc's minimum ({'.'.join(map(str, GLIBC_MINIMUM))})"
    return GLIBC, "the default"


def glibc(probe: Path) -> Userland:
    """The host's busybox-static and dropbear, and the probe as `harness.kit.probe` built it."""
    return Userland(GLIBC, image.BUSYBOX, image.DROPBEAR, probe)


def musl(cache: Path, mirror: Callable[[], str], log: Callable[[str], None], leases: Leases = UNLEASED) -> Userland:
    """busybox, dropbear and the probe built static with musl (once per sources and recipe), and
    leased with their sources (harness.cache.lease)."""
    if shutil.which("musl-gcc") is None:
        raise UserError("musl-gcc is not installed: install musl-tools (make deps does)")
    if shutil.which("dpkg-source") is None:
        raise UserError("dpkg-source is not installed: install dpkg-dev (make deps does)")
    root = cache / "userland"
    with locked(root / ".lock"):  # one at a time: every build reads the one copy of the sources
        src = _sources(leases.use(root / "src"), mirror, log)
        key = hashlib.sha256(
            json.dumps(
                {
                    "recipe": RECIPE,
                    "sources": sorted(p.name for p in src.values()),
                    "probe": _probe_digest(),
                    "musl": _musl_version(),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:24]
        done = leases.use(root / f"musl-{key}")
        if not (done / "probe").is_file():
            log("building the musl userland (busybox, dropbear, probe) from Debian's sources; about 3 min, once")
            stage = Path(tempfile.mkdtemp(prefix=".musl-", dir=root))
            try:
                _build(src, stage, root / "musl-failed.log")
                os.replace(root / "musl-failed.log", stage / "build.log")  # it did not fail after all
                os.replace(stage, done)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        for used in (done, root / "src"):
            with contextlib.suppress(OSError):
                os.utime(used)  # their last use, which `harness cache prune --older-than` reads
    return Userland(MUSL, done / "busybox", done / "dropbear", done / "probe")


def _sources(folder: Path, mirror: Callable[[], str], log: Callable[[str], None]) -> dict[str, Path]:
    """The unpacked, patched source trees of busybox and dropbear from Debian, via apt-get source."""
    found = {name: sorted(folder.glob(f"{name}-[0-9]*/")) for name in ("busybox", "dropbear")}
    if all(found.values()):
        return {name: trees[-1] for name, trees in found.items()}
    log(f"fetching the sources of busybox and dropbear from Debian {SOURCE_SUITE}")
    tools.apt(
        folder / "apt",
        f"deb-src {mirror()} {SOURCE_SUITE}",
        ["source", "-q", "busybox", "dropbear"],
        "the sources of busybox and dropbear",
        cwd=folder,
    )
    found = {name: sorted(folder.glob(f"{name}-[0-9]*/")) for name in ("busybox", "dropbear")}
    if not all(found.values()):
        raise InfraError(f"apt-get source left no busybox or dropbear tree in {folder}")
    return {name: trees[-1] for name, trees in found.items()}


def _probe_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(GUEST_TESTS.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _musl_version() -> str:
    proc = subprocess.run(["musl-gcc", "-v"], capture_output=True, text=True)
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown"


def _run(argv: list[str], cwd: Path, log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        errors = [line for line in log.read_text(errors="replace").splitlines() if "error" in line.lower()]
        raise InfraError(
            f"building the musl userland: {what} failed: {(errors or ['see the log'])[0].strip()} (log: {log})"
        )


def _build(src: dict[str, Path], stage: Path, log: Path) -> None:
    """Build into `stage`; the log goes to `log`, which a failed build leaves for the user to read."""
    log.unlink(missing_ok=True)
    work = stage / "work"
    headers = work / "include"  # the kernel's uapi headers musl-gcc does not look for by itself
    headers.mkdir(parents=True)
    for h in KERNEL_HEADERS:
        (headers / h.name).symlink_to(h)
    jobs = f"-j{os.cpu_count() or 1}"
    cc = f"musl-gcc -isystem {headers}"

    busybox = work / "busybox"
    shutil.copytree(src["busybox"], busybox, symlinks=True)
    _run(["make", "-s", "defconfig"], busybox, log, "busybox defconfig")
    config = busybox / ".config"
    config.write_text(config.read_text().replace("# CONFIG_STATIC is not set", "CONFIG_STATIC=y"))
    _run(["make", "-s", jobs, f"CC={cc}", "busybox"], busybox, log, "busybox")
    shutil.copyfile(busybox / "busybox", stage / "busybox")

    dropbear = work / "dropbear"
    shutil.copytree(src["dropbear"], dropbear, symlinks=True)
    (dropbear / "localoptions.h").write_text(DROPBEAR_OPTIONS)
    (dropbear / "crypt_stub.c").write_text(CRYPT_STUB)
    env = {**os.environ, "CC": "musl-gcc", "CFLAGS": "-Os -DHAVE_CRYPT=1"}
    _run(["musl-gcc", "-Os", "-c", "crypt_stub.c", "-o", "crypt_stub.o"], dropbear, log, "crypt stub", env)
    _run(["./configure", *DROPBEAR_CONFIGURE], dropbear, log, "dropbear configure", env)
    _run(
        ["make", jobs, "PROGRAMS=dropbear", "STATIC=1", f"LIBS={dropbear / 'crypt_stub.o'}"],
        dropbear,
        log,
        "dropbear",
        env,
    )
    shutil.copyfile(dropbear / "dropbear", stage / "dropbear")

    tests = work / "probe"
    shutil.copytree(GUEST_TESTS, tests, ignore=shutil.ignore_patterns("probe", "*.o"))
    _run(["make", "-s", "CC=musl-gcc", "probe"], tests, log, "probe")
    shutil.copyfile(tests / "probe", stage / "probe")
    for name in ("busybox", "dropbear", "probe"):
        (stage / name).chmod(0o755)
    shutil.rmtree(work)
