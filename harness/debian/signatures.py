"""What a signature on a Debian index is worth: gpgv checks it, this module decides.

Apt's rule for today's archives: at least one good signature by a key of the keyring, none bad.
Debian's old releases and snapshots are signed with keys that have expired since (and moved to
`debian-archive-removed-keys.gpg`); such a signature is accepted only where the caller allows it
and only if it was made while the key was still valid, and the signer says so for the manifest.
gpgv's status lines (GnuPG's doc/DETAILS) are the only thing read.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError, UserError

TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Signer:
    """The key whose signature was accepted, when it was made, and when the key expired (if it has)."""

    fingerprint: str
    made: int  # seconds since the epoch
    expired: int | None = None

    def note(self) -> str:
        """What a manifest says of a signature by an expired key ("" for a valid key)."""
        if self.expired is None:
            return ""
        return (
            f"signed {_day(self.made)} by {self.fingerprint}, a key that expired {_day(self.expired)} "
            "(the signature predates the expiry)"
        )


def _day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def verify(
    data: bytes, keyrings: Sequence[Path], what: str, *, detached: bytes | None = None, accept_expired: bool = False
) -> tuple[bytes, Signer]:
    """The signed bytes of `data` (clearsigned, or signed by the `detached` signature) and who signed
    them; InfraError naming `what` and gpgv's reason when the signature is not good enough."""
    missing = [k for k in keyrings if not k.is_file()]
    if missing:
        raise UserError(f"keyring {missing[0]} not found; install debian-archive-keyring or pass --insecure")
    with tempfile.TemporaryDirectory(prefix="harness-gpgv-") as tmp:
        signed, body = Path(tmp) / "signed", Path(tmp) / "body"
        signed.write_bytes(data)
        argv = ["gpgv", *(a for k in keyrings for a in ("--keyring", str(k))), "--status-fd", "1"]
        if detached is None:
            argv += ["--output", str(body), str(signed)]
        else:
            sig = Path(tmp) / "signature"
            sig.write_bytes(detached)
            argv += [str(sig), str(signed)]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, "LC_ALL": "C"}
            )
        except FileNotFoundError:
            raise InfraError("gpgv not found: install gpgv (or pass --insecure)") from None
        except subprocess.TimeoutExpired:
            raise InfraError(f"gpgv timed out checking {what}") from None
        signer = accepted(proc.stdout, proc.returncode, accept_expired)
        if signer is None:
            detail = refusal(proc.stdout, accept_expired) or gpgv_reason(proc.stderr) or f"gpgv exit {proc.returncode}"
            raise InfraError(f"{what} failed signature check against {', '.join(map(str, keyrings))}: {detail}")
        return (data if detached is not None else body.read_bytes()), signer


def _blocks(status: str) -> list[list[list[str]]]:
    """gpgv's status lines, split into one block per signature (each starts at NEWSIG)."""
    blocks: list[list[list[str]]] = [[]]
    for line in status.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line.split()[1:]
        if words and words[0] == "NEWSIG":
            blocks.append([])
        elif words:
            blocks[-1].append(words)
    return [b for b in blocks if b]


def _signer(block: list[list[str]], accept_expired: bool) -> Signer | None:
    kinds = {w[0] for w in block}
    valid = next((w for w in block if w[0] == "VALIDSIG" and len(w) > 1), None)
    if valid is None or kinds & {"BADSIG", "REVKEYSIG", "EXPSIG"}:
        return None
    made = int(valid[3]) if len(valid) > 3 and valid[3].isdigit() else None
    if "GOODSIG" in kinds:
        return Signer(valid[1], made or 0)
    if "EXPKEYSIG" in kinds and accept_expired and made is not None:
        expiries = [int(w[1]) for w in block if w[0] == "KEYEXPIRED" and len(w) > 1 and w[1].isdigit()]
        if expiries and made < min(expiries):
            return Signer(valid[1], made, min(expiries))
    return None


def accepted(status: str, returncode: int, accept_expired: bool = False) -> Signer | None:
    """The signer of the first good signature, or None. Good: VALIDSIG with GOODSIG, or (where
    allowed) EXPKEYSIG made before the key expired; no BADSIG anywhere. Extra signatures from keys the
    keyring lacks (NO_PUBKEY, exit 2) are tolerated, as Debian signs with the keys of two releases and
    an older keyring may know only one."""
    blocks = _blocks(status)
    if any(w[0] == "BADSIG" for b in blocks for w in b):
        return None
    signers = [s for s in (_signer(b, accept_expired) for b in blocks) if s is not None]
    if not signers:
        return None
    if returncode != 0:
        errsigs = [w for b in blocks for w in b if w[0] == "ERRSIG"]
        if not (errsigs and all(len(w) > 6 and w[6] == "9" for w in errsigs) and returncode in (1, 2)):
            return None
    return min(signers, key=lambda s: s.expired is not None)  # a valid key's signature first


def refusal(status: str, accept_expired: bool) -> str:
    """Why a signature that gpgv itself calls good was still refused, if that is the reason."""
    for block in _blocks(status):
        kinds = {w[0] for w in block}
        if "EXPKEYSIG" in kinds and "VALIDSIG" in kinds:
            if not accept_expired:
                return "signed by an expired key (accepted only for Debian's old releases and snapshots)"
            return "signed by a key after it had expired"
    return ""


# gpgv's stderr says first when and with which key a signature was made, then what it thinks of it;
# the verdict is the line worth showing, the most telling first.
_GPGV_VERDICTS = (
    "BAD signature",
    "no signature found",
    "not a detached signature",
    "Can't check signature",
    "verify signatures failed",
    "signature could not be verified",
)
_GPGV_PREAMBLE = re.compile(r"gpgv:\s+(Signature made|using \S+ key|issuer|aka )")


def gpgv_reason(stderr: str) -> str:
    """The line of gpgv's stderr that says why it refused, without its "gpgv: " prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for verdict in _GPGV_VERDICTS:
        found = next((ln for ln in lines if verdict.lower() in ln.lower()), None)
        if found is not None:
            return found.removeprefix("gpgv: ")
    rest = [ln for ln in lines if not _GPGV_PREAMBLE.match(ln)]
    return (rest or lines or [""])[-1].removeprefix("gpgv: ")
