"""Sizes as a matrix and the expectations write them (64K, 8M, unlimited), and the RLIMIT_MEMLOCK
pair a run sets."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Memlock:
    """An RLIMIT_MEMLOCK pair in bytes; None means RLIM_INFINITY."""

    soft: int | None
    hard: int | None

    @property
    def label(self) -> str:
        if self.soft == self.hard:
            return format_size(self.soft)
        return f"{format_size(self.soft)}:{format_size(self.hard)}"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """'64K' -> 65536. Plain integers are bytes. Raises ValueError with a reason."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64K, 8M or 0")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 64K, 8M or 0")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (use a number with K, M or G, e.g. 64K)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)
