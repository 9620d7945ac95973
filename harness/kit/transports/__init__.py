"""Transports: how the harness reaches the SSH server in a guest.

`net` forwards a host port to the guest over a NIC (virtio-net, or e1000 for older kernels), which
a Debian kernel has only as a module. `serial` carries the same SSH connection over the guest's
second 8250 UART, which every x86 kernel has built in: the way in for a kernel without a NIC
driver (a `path:` kernel without modules, a Debian build whose modules package left the index, a
self-built kernel without one). Everything above the connection (dropbear, the pinned host key, paramiko, the probe)
is the same, so results do not depend on the transport. Each transport is one module here; this
registry is the only place that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.kit.transports import net, serial
from harness.kit.transports.base import Link, Transport

__all__ = ["AUTO", "NAMES", "PREFERRED", "TRANSPORTS", "Link", "Transport", "choose", "get"]

AUTO = "auto"
PREFERRED = net.TRANSPORT.name  # what `auto` takes when it can: the faster way in
TRANSPORTS: Mapping[str, Transport] = {t.name: t for t in (net.TRANSPORT, serial.TRANSPORT)}
NAMES = (AUTO, *TRANSPORTS)  # what a matrix may ask for


def get(name: str) -> Transport:
    return TRANSPORTS[name]


def choose(requested: str, nic: str | None) -> tuple[str, str]:
    """The transport a boot uses, and why: `auto` is net when the kernel can drive one of the NICs
    QEMU can give it (`nic`, harness.kernels.devices), else serial."""
    if requested != AUTO:
        return requested, "asked for by the matrix"
    if nic is not None:
        return PREFERRED, f"the kernel has its {nic} driver"
    return serial.TRANSPORT.name, "the kernel has no NIC driver the guest can load"
