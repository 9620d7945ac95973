"""SSH into a booted guest through fabric/paramiko, with the guest's host key pinned.

Fabric's Connection trusts any host key (AutoAddPolicy) and reads ~/.ssh/config; both are
switched off here: a guest that is not ours must fail the connection, not be remembered.
"""

from __future__ import annotations

import base64
import itertools
import logging
import select
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fabric import Config, Connection

from harness.errors import InfraError
from harness.files import write_private
from harness.streams import Line, Lines, Tail


class SSHFailure(InfraError):
    """The guest could not be reached or the connection broke."""


class CommandTimeout(InfraError):
    """A command in the guest ran past its deadline."""


class TrustFailure(SSHFailure):
    """The guest is not the one the harness built: a wrong host key, or its refusal of the harness's key.
    A security event: never retried, reported as such."""


# paramiko logs a failed handshake at ERROR with its traceback ("Exception (client): Error reading
# SSH protocol banner" and fifteen lines). With no handler anywhere, Python's last-resort handler
# would print that on the terminal, between the run's own lines, for a connection the harness
# retries or reports itself: a session sends its client's messages to its endpoint's log instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

MAX_LINE = 1 << 20  # a probe record is a few kB; a longer line is not one
KEEP = 1 << 20  # of each of a command's streams, the last this many bytes are kept


def client_key(cache: Path) -> paramiko.PKey:
    """The harness's SSH client key, made once in the cache with mode 0600.

    paramiko cannot read dropbear's key format (pitfall 8), so the key is made here in
    OpenSSH format and only its public half goes into the images.
    """
    path = cache / "keys" / "id_ed25519"
    if not path.exists():
        write_private(
            path, Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
        )
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} harness"


@dataclass(frozen=True)
class Endpoint:
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." as pinned in the image
    host: str = "127.0.0.1"
    sock: socket.socket | None = None  # an open line to the guest's sshd instead of TCP (transports.serial)
    log: Path | None = None  # where the SSH client's own messages go (the boot's serial log); None: nowhere

    @property
    def known_hosts_name(self) -> str:
        # paramiko looks a forwarded port up as "[host]:port", port 22 as the bare host (pitfall 8)
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


class _LogTo(logging.Handler):
    """The SSH client's messages (paramiko's, on a log channel of this session's own), appended to a
    file as `[harness: ssh: ...]` lines, tracebacks included."""

    _count = itertools.count()

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self.channel = f"paramiko.harness.{next(self._count)}"
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self._logger = logging.getLogger(self.channel)
        self._logger.addHandler(self)
        self._logger.setLevel(logging.WARNING)  # its failures; not a line per login

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = "".join(f"[harness: ssh: {line}]\n" for line in self.format(record).splitlines())
            with self.path.open("ab") as f:  # one write: the console's reader appends to the same file
                f.write(("\n" + text).encode(errors="replace"))
        except (OSError, ValueError):
            pass  # the log is evidence, not the session: a log that cannot be written costs nothing more

    def close(self) -> None:
        self._logger.removeHandler(self)
        super().close()


class Guest:
    """An SSH session to one guest user. Connect with retries; close on every exit path."""

    def __init__(self, endpoint: Endpoint, user: str, key: paramiko.PKey, connect_timeout: float = 10.0):
        self.endpoint = endpoint
        self.user = user
        config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        connect_kwargs: dict[str, Any] = {
            "pkey": key,
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
        }
        if endpoint.sock is not None:
            connect_kwargs["sock"] = endpoint.sock
        self.conn = Connection(
            endpoint.host,
            user=user,
            port=endpoint.port,
            config=config,
            connect_timeout=connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        self._logged = _LogTo(endpoint.log) if endpoint.log is not None else None
        if self._logged is not None:
            self.conn.client.set_log_channel(self._logged.channel)
        kind, blob = endpoint.host_key.split()[:2]
        pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        self.conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.conn.client.get_host_keys().add(endpoint.known_hosts_name, kind, pinned)

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()
        if self._logged is not None:
            self._logged.close()

    def connect(self, attempts: int = 5, delay: float = 0.5) -> float:
        """Open the session; seconds it took. A refused key or a wrong host key is never retried."""
        start = time.monotonic()
        name = self.endpoint.known_hosts_name
        if self.endpoint.sock is not None:
            attempts = 1  # a line is used up by a failed handshake: the boot is tried again instead
        for attempt in range(attempts):
            try:
                self.conn.open()
                return time.monotonic() - start
            except paramiko.AuthenticationException as e:
                raise TrustFailure(
                    f"the guest at {name} refused the harness key for {self.user}: the image is not "
                    f"the one the harness built ({e})"
                ) from e
            except paramiko.BadHostKeyException as e:
                raise TrustFailure(
                    f"{name} presented a host key that is not the image's: something else answers on the guest's port"
                ) from e
            except paramiko.SSHException as e:
                if "not found in known_hosts" in str(e):
                    raise TrustFailure(f"{name}: host key not pinned: {e}") from e
                last: Exception = e
            except (OSError, EOFError) as e:
                last = e
            self.conn.close()
            if attempt + 1 < attempts:
                time.sleep(delay * (attempt + 1))
        raise SSHFailure(f"cannot reach {self.user}@{name}: {last}")

    def run(self, argv: Sequence[str], timeout: float, on_line: Callable[[Line], None] | None = None) -> Result:
        """Run argv (quoted for the guest's shell), handing each stdout line to `on_line` as it arrives.

        Read on a channel of fabric's connection, not with fabric's `run`, which keeps all output in
        memory and runs callbacks in threads of its own: here a line is at most MAX_LINE bytes (a
        longer one is cut, and marked), and only the last KEEP bytes of each stream are kept for the
        Result, however much the guest writes.
        """
        command = shlex.join(argv)
        deadline = time.monotonic() + timeout
        lines, out, err = Lines(MAX_LINE), Tail(KEEP), Tail(KEEP)
        try:
            transport = self.conn.client.get_transport()
            if transport is None or not transport.is_active():
                raise SSHFailure(f"no SSH connection to the guest to run {argv[0]}")
            with transport.open_session(timeout=min(timeout, 30.0)) as channel:
                channel.exec_command(command)
                ready = channel.fileno()
                while True:
                    while channel.recv_ready():
                        data = channel.recv(1 << 16)
                        out.feed(data)
                        for line in lines.feed(data):
                            if on_line is not None:
                                on_line(line)
                    while channel.recv_stderr_ready():
                        err.feed(channel.recv_stderr(1 << 16))
                    if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                        break
                    if channel.closed or not transport.is_active():
                        raise SSHFailure(f"SSH session ended without an exit status while running {argv[0]}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g}s")
                    if channel.eof_received:  # the output is complete; the exit status is on its way
                        channel.status_event.wait(min(left, 1.0))
                    else:  # readable when either stream has data, or at EOF
                        select.select([ready], [], [], min(left, 1.0))
                status = channel.recv_exit_status()
        except InfraError:
            raise
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as e:
            raise SSHFailure(f"SSH connection to the guest broke while running {argv[0]}: {e}") from e
        rest = lines.end()
        if rest is not None and on_line is not None:
            on_line(rest)
        if status < 0:
            raise SSHFailure(f"SSH session ended without an exit status while running {argv[0]}")
        return Result(status, out.text(), err.text())
