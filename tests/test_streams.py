"""harness/streams.py: lines from a guest's stream, in bounded memory and linear time."""

from __future__ import annotations

from harness.streams import Line, Lines, Tail


def test_lines_across_chunks_and_the_unfinished_end() -> None:
    lines = Lines(100)
    got = list(lines.feed(b"one\ntw")) + list(lines.feed(b"o\n\nthr")) + list(lines.feed(b"ee"))
    assert got == [Line(b"one"), Line(b"two"), Line(b"")]
    assert lines.end() == Line(b"three", complete=False)
    assert lines.end() is None


def test_a_line_longer_than_the_bound_is_cut_and_counted_never_kept() -> None:
    lines = Lines(1000)
    chunk = b"A" * (1 << 20)
    for _ in range(100):  # 100 MB without a newline
        assert list(lines.feed(chunk)) == []
        assert len(lines._pending) == 1000
    (cut,) = lines.feed(b"tail\n")
    assert cut.data == b"A" * 1000 and cut.cut == 100 * (1 << 20) + len(b"tail") - 1000 and cut.complete
    assert list(lines.feed(b"next\n")) == [Line(b"next")]


def test_tail_keeps_the_last_bytes() -> None:
    tail = Tail(10)
    for i in range(100):
        tail.feed(f"line {i}\n".encode())
    assert tail.text() == "8\nline 99\n" and tail.dropped == len("".join(f"line {i}\n" for i in range(100))) - 10
