"""QEMU's machine protocol (QMP): commands to a running QEMU over its Unix socket.

QEMU is the harness's own child, but what it says can carry what a guest made of its devices, so
a reply is read like any other input: one bounded JSON line at a time.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from harness.errors import InfraError

REPLY_MAX = 1 << 20  # QMP replies are small; a migration's status is about 1 KiB


class QMP:
    """One connection, in a `with` block; `command` returns a command's `return` value."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rwb")

    def __enter__(self) -> QMP:
        try:
            self._sock.connect(str(self.path))
            self._read()  # the greeting
            self.command("qmp_capabilities")
        except OSError as e:
            self.close()
            raise InfraError(f"QEMU's QMP socket {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # QEMU went first
            self._file.close()
        self._sock.close()

    def command(self, name: str, **arguments: object) -> Any:
        """Send one command and wait for its reply, skipping the events QEMU sends meanwhile."""
        cmd: dict[str, object] = {"execute": name, **({"arguments": arguments} if arguments else {})}
        try:
            self._file.write(json.dumps(cmd).encode() + b"\n")
            self._file.flush()
            while True:
                reply = self._read()
                if "error" in reply:
                    error = reply["error"]
                    desc = error.get("desc", "no description") if isinstance(error, dict) else error
                    raise InfraError(f"QEMU refused {name}: {str(desc)[:300]}")
                if "return" in reply:
                    return reply["return"]
        except OSError as e:
            raise InfraError(f"QEMU's QMP socket {self.path}: {e}") from e

    def wait_for(self, name: str, key: str, done: set[str], timeout: float, **arguments: object) -> Any:
        """Repeat a query command until its `key` is one of `done`; its last reply."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.command(name, **arguments)
            if isinstance(reply, dict) and reply.get(key) in done:
                return reply
            if time.monotonic() > deadline:
                said = reply.get(key) if isinstance(reply, dict) else reply
                raise InfraError(f"QEMU's {name} still says {str(said)[:80]!r} after {timeout:g}s")
            time.sleep(0.02)

    def _read(self) -> dict[str, Any]:
        line = self._file.readline(REPLY_MAX + 1)
        if not line:
            raise InfraError(f"QEMU closed its QMP socket {self.path}")
        if len(line) > REPLY_MAX:
            raise InfraError(f"QEMU sent a QMP line over {REPLY_MAX} bytes")
        try:
            reply = json.loads(line)
        except ValueError as e:
            raise InfraError(f"QEMU sent a QMP line that is not JSON: {e}") from e
        if not isinstance(reply, dict):
            raise InfraError("QEMU sent a QMP line that is not a JSON object")
        return reply
