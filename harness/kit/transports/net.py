"""`net`: a NIC on QEMU's user-mode network, the guest's port 22 forwarded to 127.0.0.1:PORT.

The fast way in (about 2.5 MiB/s under TCG here), for a kernel that can load or has built in a
driver for one of the NICs of `harness.kernels.devices` (virtio-net, else e1000). `restrict=on`: the
guest reaches nothing, neither the host's services nor beyond; the harness's own forward into
the guest still works.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from harness.kit.guest import Endpoint

PORT_TAKEN = "Could not set up host forwarding rule"


@dataclass(frozen=True)
class _Forward:
    port: int

    def endpoint(self, host_key: str) -> Endpoint:
        return Endpoint(self.port, host_key)

    def close(self) -> None:
        pass


class Net:
    name = "net"
    kernel_arg = ""  # /init serves SSH on eth0 unless told otherwise

    def qemu_args(self, port: int, channel: Path | None, nic: str) -> list[str]:
        return [
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            f"{nic},netdev=n0,romfile=",
        ]

    def place(self, workdir: Path) -> tuple[int, Path | None]:
        return free_port(), None

    def open(self, port: int, channel: Path | None, deadline: float) -> _Forward:
        return _Forward(port)

    def retry_after(self, qemu_stderr: str) -> bool:
        # Choosing a free port and handing it to QEMU is racy with parallel VMs (PROTOTYPE
        # pitfall 9): the race is resolved by trying another port, not by locking.
        return PORT_TAKEN in qemu_stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TRANSPORT = Net()
