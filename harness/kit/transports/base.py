"""What a transport provides: QEMU's side of the way in (pure), and the host's side for one guest."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from harness.kit.guest import Endpoint


class Link(Protocol):
    """One guest's way in, from QEMU's start to its end."""

    def endpoint(self, host_key: str) -> Endpoint:
        """Where the SSH session connects, the guest's host key pinned."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    name: str
    kernel_arg: str  # appended to the guest's kernel command line: tells /init how to serve SSH

    def qemu_args(self, port: int, channel: Path | None, nic: str) -> list[str]:
        """QEMU options for this way in (`nic`: the NIC model, for a transport that uses one); pure,
        so the printed command line reproduces the boot."""
        ...

    def place(self, workdir: Path) -> tuple[int, Path | None]:
        """What a new VM uses (a free port, a socket path under `workdir`), before QEMU starts."""
        ...

    def open(self, port: int, channel: Path | None, deadline: float) -> Link:
        """The host's end, once QEMU runs; InfraError when it cannot be had by `deadline`."""
        ...

    def retry_after(self, qemu_stderr: str) -> bool:
        """Whether a QEMU that exited with this error deserves another place (a port taken, say)."""
        ...
