"""`serial`: SSH over the guest's second 8250 UART (ttyS1), which every x86 kernel has built in.

QEMU connects the UART to a Unix socket in a directory only this user can enter, and waits
(`wait=on`) until the harness has connected: so nothing the guest writes there is lost before the
harness reads it. In the guest, /init runs dropbear on 127.0.0.1:22 (the loopback device needs no
driver) and relays the raw tty to it with busybox `nc`; dropbear's inetd mode will not serve a tty.
The relay connects when the session wakes it (WAKE), not at boot: a guest saved at its ready
marker (harness.boot.snapshot) holds no half-spent connection for the guests loaded from it.
paramiko runs over the socket as over TCP, so host-key pinning and everything above are unchanged.
Slower than `net` (about 250 KiB/s under TCG here), which a probe's few kB per case never notice.
One connection per guest: a second would meet the first's relay.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from harness.kit.guest import Endpoint, SSHFailure

GUEST_NAME = "serial"  # the guest's name in the pinned known-hosts entry (port 22: no brackets)
WAKE = b"\n"  # the byte that has the guest's relay connect to dropbear (images/init); SSH's bytes follow it


@dataclass
class _Line:
    sock: socket.socket

    def endpoint(self, host_key: str) -> Endpoint:
        """The line, its relay in the guest woken for the session that will use it."""
        try:
            self.sock.sendall(WAKE)
        except OSError as e:
            raise SSHFailure(f"the serial line to the guest is gone: {e.strerror}") from None
        return Endpoint(22, host_key, GUEST_NAME, self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Serial:
    name = "serial"
    kernel_arg = "harness.transport=serial"

    def qemu_args(self, port: int, channel: Path | None, nic: str) -> list[str]:
        # The second UART: ttyS1. A VM not yet placed prints where its socket will be.
        return ["-serial", f"unix:{channel or 'ssh.sock'},server=on,wait=on"]

    def place(self, workdir: Path) -> tuple[int, Path | None]:
        return 0, workdir / "ssh.sock"

    def open(self, port: int, channel: Path | None, deadline: float) -> _Line:
        """Connect as soon as QEMU listens: until then the guest does not even start."""
        assert channel is not None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(channel))
                return _Line(sock)
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise SSHFailure(f"QEMU never opened the serial line {channel}: {e.strerror}") from None
                time.sleep(0.01)

    def retry_after(self, qemu_stderr: str) -> bool:
        return False


TRANSPORT = Serial()
