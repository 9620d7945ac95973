"""SSH into a booted guest through fabric/paramiko, with the guest's host key pinned.

Fabric's Connection trusts any host key (AutoAddPolicy) and reads ~/.ssh/config; both are
switched off here: a guest that is not ours must fail the connection, not be remembered.
"""

from __future__ import annotations

import base64
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from harness.errors import InfraError
from harness.files import write_private


class SSHFailure(InfraError):
    """The guest could not be reached or the connection broke."""


class CommandTimeout(InfraError):
    """A command in the guest ran past its deadline."""


def client_key(cache: Path) -> paramiko.PKey:
    """The harness's SSH client key, made once in the cache with mode 0600.

    paramiko cannot read dropbear's key format (pitfall 8), so the key is made here in
    OpenSSH format and only its public half goes into the images.
    """
    path = cache / "keys" / "id_ed25519"
    if not path.exists():
        write_private(path, Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH,
                                                                       NoEncryption()))  # fmt: skip
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} harness"


@dataclass(frozen=True)
class Endpoint:
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." as pinned in the image
    host: str = "127.0.0.1"

    @property
    def known_hosts_name(self) -> str:
        # paramiko looks a forwarded port up as "[host]:port" (pitfall 8)
        return f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Guest:
    """An SSH session to one guest user. Connect with retries; close on every exit path."""

    def __init__(self, endpoint: Endpoint, user: str, key: paramiko.PKey, connect_timeout: float = 10.0):
        self.endpoint = endpoint
        self.user = user
        config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        self.conn = Connection(
            endpoint.host,
            user=user,
            port=endpoint.port,
            config=config,
            connect_timeout=connect_timeout,
            connect_kwargs={
                "pkey": key,
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": connect_timeout,
                "auth_timeout": connect_timeout,
            },
        )
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

    def connect(self, attempts: int = 5, delay: float = 0.5) -> float:
        """Open the session; seconds it took. Never retries a refused key or a wrong host key."""
        start = time.monotonic()
        for attempt in range(attempts):
            try:
                self.conn.open()
                return time.monotonic() - start
            except paramiko.AuthenticationException as e:
                raise SSHFailure(f"guest refused the harness key for {self.user}: {e}") from e
            except paramiko.BadHostKeyException as e:
                raise SSHFailure(f"{self.endpoint.known_hosts_name} presented an unexpected host key") from e
            except paramiko.SSHException as e:
                if "not found in known_hosts" in str(e):
                    raise SSHFailure(f"{self.endpoint.known_hosts_name}: host key not pinned: {e}") from e
                last: Exception = e
            except (OSError, EOFError) as e:
                last = e
            self.conn.close()
            if attempt + 1 < attempts:
                time.sleep(delay * (attempt + 1))
        raise SSHFailure(f"cannot reach {self.user}@{self.endpoint.known_hosts_name}: {last}")

    def run(self, argv: Sequence[str], timeout: float, on_line: Callable[[str], None] | None = None) -> Result:
        """Run argv (quoted for the guest's shell) and stream stdout lines to on_line as they arrive."""
        command = shlex.join(argv)
        stream = _LineStream(on_line)
        try:
            result: Any = self.conn.run(command, hide=True, warn=True, timeout=timeout, out_stream=stream)
        except CommandTimedOut as e:
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g}s") from e
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as e:
            raise SSHFailure(f"SSH connection to the guest broke while running {argv[0]}: {e}") from e
        if result.exited is None or result.exited < 0:
            raise SSHFailure(f"SSH session ended without an exit status while running {argv[0]}")
        return Result(result.exited, result.stdout, result.stderr)


class _LineStream:
    """A file-like sink for fabric's out_stream that hands complete lines to a callback."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self.pending = ""

    def write(self, data: str) -> int:
        self.pending += data
        *lines, self.pending = self.pending.split("\n")
        if self.on_line:
            for line in lines:
                self.on_line(line)
        return len(data)

    def flush(self) -> None:
        """A partial last line is an unfinished record: it is never handed on as complete."""
