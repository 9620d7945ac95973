"""A child process owned for its whole life: in a process group of its own, killed with the whole
group on every way out of the block that started it, and by the kernel when the thread that
started it dies (QEMU, make, the KVM check)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess


class Process:
    """A child in its own process group, killed with the whole group on every exit path, and by the
    kernel when the thread that started it dies, however that happens (SIGKILL, the OOM killer)."""

    def __init__(self, argv: list[str], **popen_kwargs: object) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            lifeline("KILL") + argv, start_new_session=True, stdin=subprocess.DEVNULL, **popen_kwargs
        )  # type: ignore[call-overload]

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        # The whole group, even when the leader has already exited: its children may not have.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@functools.cache
def lifeline(signame: str) -> list[str]:
    """A prefix for a child's argv: util-linux's setpriv sets the child's parent-death signal, then
    execs it. When the thread that started it dies, with the harness however it died (SIGKILL, the
    OOM killer), the kernel sends the child `signame`; a child in a session of its own is out of
    reach of a job's process-group kill otherwise. Without setpriv, only the harness's own exit paths
    stop its children."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", signame, "--"] if setpriv else []
