"""Reading what a guest writes (its serial console, the probe's stdout): in lines, with bounded memory.

A guest is untrusted: it may write gigabytes without a newline, a stream may stop mid-line. `Lines`
holds at most `max_line` bytes of an unfinished line and looks for newlines only in what just
arrived, so its cost is linear in the stream; a longer line is cut and marked, never buffered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    data: bytes  # without the newline; at most max_line bytes
    cut: int = 0  # bytes of this line that were dropped (it was longer than max_line)
    complete: bool = True  # False: the stream ended before its newline


class Lines:
    """Split a byte stream into lines, keeping at most `max_line` bytes of any one."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._pending = bytearray()
        self._cut = 0

    def feed(self, chunk: bytes) -> Iterator[Line]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self._keep(chunk[start:end])
            yield Line(bytes(self._pending), self._cut)
            self._pending.clear()
            self._cut = 0
            start = end + 1

    def end(self) -> Line | None:
        """What is left when the stream ends: an unfinished line, or None."""
        if not self._pending and not self._cut:
            return None
        line = Line(bytes(self._pending), self._cut, complete=False)
        self._pending.clear()
        self._cut = 0
        return line

    def _keep(self, data: bytes) -> None:
        room = self.max_line - len(self._pending)
        if len(data) <= room:
            self._pending += data
        else:
            self._pending += data[: max(room, 0)]
            self._cut += len(data) - max(room, 0)


class Tail:
    """The last `limit` bytes of a stream (a command's stderr, say)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        over = len(self._data) - self.limit
        if over > 0:
            del self._data[:over]
            self.dropped += over

    def text(self) -> str:
        return self._data.decode("utf-8", "replace")
