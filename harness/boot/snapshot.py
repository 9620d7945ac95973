"""Saved guests: a guest booted once, saved at its ready marker, and loaded by every later boot of
the same kernel, image, devices, RAM and QEMU instead of being booted again.

Under TCG a guest needs 5-7 s from QEMU's start to its ready marker; a loaded one answers SSH
about half a second after its QEMU starts (`make bench`). The state is taken before any case
runs, so a case meets a loaded guest exactly where it would meet the guest that was saved: the
kernel and init it ran are the ones under test, nothing else. `bench/determinism.py` holds
the verdicts and fingerprints of loaded guests to those of cold boots.

Two things do differ, and neither reaches a verdict. The guest's clocks resume where they stopped
(its date is the day it was saved). Its random state is the saved guest's; SECURITY.md says
what that means for SSH.

A state is QEMU's migration stream, compressed with zstd: 20 MiB for a 256 MiB guest. It is
keyed by QEMU's version and command line (but its port or socket) and by the digests of every
file that command line loads; a state that fails to load is deleted and the guest boots cold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.boot import qmp, vm
from harness.cache.lease import Leases
from harness.errors import InfraError

FORMAT = 1  # what a saved guest's folder holds and how it is loaded; a new format is a new key
STATE = "state.zst"
CONSOLE = "console.log"  # what the guest printed up to the moment it was saved
ABOUT = "saved.json"
SAVE_TIMEOUT = 120.0  # seconds for QEMU to write a state
STALE_AFTER = 86400.0  # seconds after which a folder being saved or deleted is a leftover
LOAD_TIMEOUT = 60.0  # seconds for a saved guest to run again (it takes under one here, under TCG)
COSTS = "costs.json"  # the seconds each case took in this guest's last boot (harness.boot.lanes orders by them)
COSTS_MAX = 1 << 20  # bytes: a catalogue's worth is 30 KB
CONNECTION = b"Child connection from"  # what dropbear -E logs on the console for each connection it accepts


@dataclass(frozen=True)
class Saved:
    """A saved guest in the store: its key and its folder."""

    key: str
    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / STATE

    @property
    def incoming(self) -> str:
        """The QEMU -incoming URI that loads it. QEMU 7.2 waits for ever on a stream that ends before
        its first byte, so a state that does not even decompress is handed over as a line of text,
        which QEMU refuses at once (what ends in the middle, it refuses by itself)."""
        return f"exec:zstd -dcq {shlex.quote(str(self.state))} || echo not-a-state"


@dataclass(frozen=True)
class Store:
    """The saved guests of a cache (cache/guests/<key>/), each leased (harness.cache.lease) from the
    moment a boot looks for it: prune leaves it while a run may load it."""

    root: Path
    leases: Leases = field(default_factory=Leases, compare=False, repr=False)  # the run's

    @classmethod
    def of(cls, cache: Path, leases: Leases | None = None) -> Store | None:
        """The cache's store; None where zstd is missing (guests then always boot cold)."""
        return cls(cache / "guests", leases or Leases()) if shutil.which("zstd") else None

    def find(self, key: str) -> Saved | None:
        folder = self.leases.use(self.root / key)  # before it is looked for: what is found stays until the run ends
        if not ((folder / STATE).is_file() and (folder / CONSOLE).is_file()):
            return None
        with contextlib.suppress(OSError):
            os.utime(folder)  # `harness cache prune --older-than` goes by last use
        return Saved(key, folder)

    def discard(self, saved: Saved) -> None:
        """Delete a state that did not load, unless another run holds it: that one is loading it,
        and discards it itself if it fails (the last to let go deletes it)."""
        with contextlib.suppress(OSError):
            self.leases.discard(saved.folder)  # renamed away first: a boot that looks finds no half folder

    def costs(self, key: str) -> dict[str, float]:
        """What each case cost the last boot of this saved guest, in seconds (by `remember`); empty
        when nothing is known, or the file is not what `remember` writes: it only orders work, so
        it is not worth a word."""
        try:
            with (self.root / key / COSTS).open("rb") as f:
                data = f.read(COSTS_MAX + 1)
            doc = json.loads(data) if len(data) <= COSTS_MAX else None
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {
            k: float(v)
            for k, v in doc.items()
            if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e6
        }

    def remember(self, key: str, spent: dict[str, float]) -> None:
        """Keep what each case cost beside the saved guest it ran in, over what an earlier boot left
        there. Nothing when there is no such guest, or it is deleted meanwhile: written in place,
        never making the folder (a folder of costs alone would keep the guest from being saved
        again); a reader that meets it half written orders by plan."""
        if not spent or not (self.root / key / STATE).is_file():
            return
        merged = {**self.costs(key), **{k: round(v, 3) for k, v in spent.items()}}
        with contextlib.suppress(OSError):
            (self.root / key / COSTS).write_text(json.dumps(merged, sort_keys=True))

    def save(self, machine: vm.VM, key: str) -> Saved:
        """Pause the guest, write its state, and let it run on. Raises InfraError when QEMU cannot;
        the guest runs on either way."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*"):  # a save cut short by a harness killed outright
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > STALE_AFTER:
                    shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=self.root))
        try:
            with qmp.QMP(machine.qmp_socket) as q:
                q.command("stop")
                try:
                    q.command("migrate", uri=f"exec:zstd -1 -q -o {shlex.quote(str(tmp / STATE))}")
                    status = q.wait_for("query-migrate", "status", {"completed", "failed", "cancelled"}, SAVE_TIMEOUT)
                except InfraError:
                    with contextlib.suppress(InfraError):
                        q.command("migrate_cancel")  # QEMU will not run a guest it is still writing
                    raise
                finally:
                    q.command("cont")
            if status.get("status") != "completed":
                raise InfraError(f"QEMU could not save the guest: {str(status.get('error-desc', status))[:300]}")
            (tmp / CONSOLE).write_bytes(machine.console())
            about = {
                "format": FORMAT,
                "key": key,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "qemu_version": vm.qemu_version(),
                "argv": dataclasses.replace(machine.config, port=0, channel=None).argv(),
            }
            (tmp / ABOUT).write_text(json.dumps(about, indent=2) + "\n")
            folder = self.leases.use(self.root / key)  # before it appears: prune cannot take it from a run
            with contextlib.suppress(OSError):  # another boot saved the same guest first: keep theirs
                tmp.rename(folder)
            return Saved(key, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def key(config: vm.VMConfig) -> str:
    """What a saved guest is for: QEMU, its command line but the port or socket, and the content of
    every file it loads (the paths alone could be rebuilt with other content)."""
    placed = dataclasses.replace(config, port=0, channel=None)
    files = {str(p): digest(p) for p in (config.kernel, config.initrd, config.disk) if p is not None}
    doc = {"format": FORMAT, "qemu": vm.qemu_version(), "argv": placed.argv(), "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def digest(path: Path) -> str:
    """A file's sha256, computed once per (path, size, mtime, inode)."""
    st = path.stat()
    return _digest_of(path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=512)
def _digest_of(path: Path, size: int, mtime_ns: int, ino: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def boot(
    store: Store | None, config: vm.VMConfig, serial_log: Path, timeout: float, cancel: threading.Event | None = None
) -> Iterator[vm.VM]:
    """A ready guest for `config`: loaded from its saved state when the store has one, else booted
    and saved. The serial log shows the saved guest's boot, then what the loaded guest prints."""
    if store is None:
        with vm.boot(config, serial_log, timeout, cancel=cancel) as cold:
            yield cold
        return
    k = key(config)
    saved = store.find(k)
    with contextlib.ExitStack() as stack:
        machine: vm.VM | None = None
        try:
            console = b"" if saved is None else (saved.folder / CONSOLE).read_bytes()[: vm.SERIAL_LOG_MAX >> 1]
        except OSError:  # discarded meanwhile by a boot it failed to load in
            saved = None
        if saved is not None:
            note = f"\n[harness: the boot above is the saved guest {k}'s; this guest is loaded from it]\n"
            _log(serial_log, console + note.encode())
            try:
                machine = stack.enter_context(
                    vm.boot(config, serial_log, min(timeout, LOAD_TIMEOUT), cancel=cancel, incoming=saved.incoming)
                )
                machine.restored = machine.saved = k
            except vm.BootFailure as e:
                if cancel is not None and cancel.is_set():
                    raise
                store.discard(saved)
                _log(
                    serial_log,
                    f"\n[harness: the saved guest did not load ({e}); it is deleted, and the "
                    "guest boots cold]\n".encode(),
                )
        if machine is None:
            machine = stack.enter_context(vm.boot(config, serial_log, timeout, cancel=cancel))
            try:
                _check_quiet(machine.console())
                store.save(machine, k)
                machine.saved = k
            except (InfraError, OSError) as e:
                _log(serial_log, f"\n[harness: the guest could not be saved for later boots: {e}]\n".encode())
        yield machine


def _check_quiet(console: bytes) -> None:
    """A guest is saved only while no connection is open: a guest loaded from one holding a
    connection (its peer gone with the saved QEMU) would answer no session. dropbear logs each
    connection it accepts on the console; before the ready marker's save there should be none."""
    if CONNECTION in console:
        raise InfraError("its sshd had already accepted a connection (dropbear: 'Child connection from')")


def _log(serial_log: Path, data: bytes) -> None:
    with serial_log.open("ab") as f:
        f.write(data)
