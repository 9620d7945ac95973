"""What each Debian kernel upload changed, read from the changelog its linux-image .deb ships.

Bisecting across Debian uploads needs the upstream stable releases and fixes (with CVE ids) each upload
took; the package's own changelog says so offline, for exactly the build under test.  It comes from
downloaded packages and a cache file, so every read is bounded and anything odd is `Malformed`, never
another exception, an endless loop or unbounded memory.  Blocks are split here, not by python-debian's
`Changelog`: fast as it is (0.05 s for bookworm's 3.7 MB), its trailer regex is quadratic on a long
" -- " line (seconds for 56 KB) and a stray column-0 word after a block silently drops all later blocks.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from debian.debian_support import Version

MAX_TEXT = 64 << 20  # decompressed changelog or cache; bookworm's is 3.7 MB
MAX_GZIP_MEMBERS = 16  # gzip(1) writes one
MAX_ENTRIES = 200_000  # bookworm's changelog lists 54 000
MAX_LINES = 2_000_000  # non-blank lines; bookworm's changelog has 63 000
MAX_LINE = 4096  # longer lines are cut: real ones stay under 120 characters
MAX_WRAPPED = 64  # lines one item may wrap onto; real ones wrap onto a few
MAX_TITLE = 300
MAX_CVES = 64
CACHE_FORMAT = 1


class Malformed(ValueError):
    """A changelog, cache or package member that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Entry:
    """One change listed in a `linux` upload's changelog block."""

    version: str  # Debian version of the linux upload ("6.1.192-1")
    upstream: str  # upstream release it came with ("6.1.191"); "" for Debian's own change
    title: str  # one line, as written (arch tags included), at most MAX_TITLE characters
    cves: tuple[str, ...]

    @property
    def tags(self) -> tuple[str, ...]:
        """Leading architecture/featureset tags: ("arm*",) for "[arm*] gpio: mxc: ..."."""
        return tuple(_TAG.findall(self.title[: len(self.title) - len(self.bare_title)]))

    @property
    def bare_title(self) -> str:
        """The title without its leading tags, to match it against upstream commit subjects."""
        return _TAGS.sub("", self.title, count=1)


_HEADER = re.compile(r"([a-z0-9][a-z0-9+.-]{0,99}) \(([^()\s]{1,100})\)[^;]*;")
_VERSION = re.compile(r"(?:\d{1,9}:)?\d[A-Za-z0-9.+~-]{0,90}")
_UPSTREAM = re.compile(r"(?:\d[A-Za-z0-9.+~-]{0,60})?")  # "" for Debian's own changes
_RELEASE_URL = re.compile(r"https?://\S*?(?:/ChangeLog-|kernelnewbies\.org/Linux_)(\d[A-Za-z0-9.+~-]{0,60})")
_NONBLANK = re.compile(r"[^\n]+")
_BULLET = re.compile(r"([*+-])(?: +(.*))?")
_AUTHOR = re.compile(r"\[ .* \]")
_SIGN = re.compile(r"Sign kernel from linux (\S{1,100})")
_CVE = re.compile(r"\bCVE-\d{4}-\d{4,8}\b", re.IGNORECASE)
_CVE_EXACT = re.compile(r"CVE-\d{4}-\d{4,8}")
_TAG = re.compile(r"\[([^\[\]\s]{1,40})\]")
_TAGS = re.compile(r"(?:\[[^\[\]\s]{1,40}\] +)+")
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")
_DOC = re.compile(r"(?:\./)?usr/share/doc/([^/]+)/changelog(\.Debian)?\.gz")


def read(data: bytes) -> str:
    """The text of a changelog.gz, refusing anything that inflates past MAX_TEXT."""
    return _gunzip(data, "changelog").decode("utf-8", errors="replace")


def entries(text: str, line: str | None = None) -> list[Entry]:
    """Every item of every linux upload in `text`, newest first; only the `line` series ("6.1") if given.

    A linux-signed-* block lists the items of the linux upload it signs, so they are credited to that
    version; other packages' blocks are skipped.  Bullets at any depth are items; an item's upstream
    release is the last ChangeLog URL of its "New upstream ..." section.
    """
    if len(text) > MAX_TEXT:
        raise Malformed(f"changelog is {len(text)} characters, more than {MAX_TEXT}")
    out: list[Entry] = []
    block: _Block | None = None
    for row in _lines(text):
        header = _HEADER.match(row)
        if block is not None and (header is not None or row.startswith(" -- ")):
            block.flush(line, out)  # also without a trailer: a truncated changelog loses its tail, not all
            block = None
        if header is not None:
            block = _Block(header.group(1), header.group(2))
        elif block is not None:
            block.feed(row)
    if block is not None:
        block.flush(line, out)
    return out


def _lines(text: str) -> Iterator[str]:
    """`text`'s lines cut to MAX_LINE; a run of blank ones is one "", so megabytes of newlines cost no loop."""
    end = -1
    for count, found in enumerate(_NONBLANK.finditer(text)):
        if count >= MAX_LINES:
            raise Malformed(f"changelog has more than {MAX_LINES} lines")
        if found.start() > end + 1:
            yield ""
        end = found.end()
        yield text[found.start() : min(end, found.start() + MAX_LINE)].rstrip()


def between(items: Iterable[Entry], after: str, upto: str) -> list[Entry]:
    """The entries of uploads after `after` up to `upto`, in the given order; ValueError for a bad version."""
    items = list(items)
    low, high = Version(after), Version(upto)
    inside = {v: low < Version(v) <= high for v in {e.version for e in items}}  # comparing is the slow part
    return [e for e in items if inside[e.version]]


def dump(items: Iterable[Entry]) -> bytes:
    """The cache form of `items`: gzip'd JSON, one [version, upstream, title, cves] row per entry."""
    rows = [[e.version, e.upstream, e.title, list(e.cves)] for e in items]
    doc = {"format": CACHE_FORMAT, "entries": rows}
    return gzip.compress(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), mtime=0)


def load(data: bytes) -> list[Entry]:
    """The entries of a cache written by `dump`, every field checked: the file may have been tampered with."""
    try:
        doc = json.loads(_gunzip(data, "cache"))
    except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested past the C parser's limit
        raise Malformed(f"cache is not JSON: {_one_line(str(e))}") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    rows = doc.get("entries") if isinstance(doc, dict) else None
    if type(fmt) is not int or fmt != CACHE_FORMAT or not isinstance(rows, list) or len(rows) > MAX_ENTRIES:
        raise Malformed(f"cache is not format {CACHE_FORMAT} with at most {MAX_ENTRIES} entries")
    for n, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4 and _valid_row(*row)):
            raise Malformed(f"cache entry {n} is not a valid [version, upstream, title, CVEs] row")
    return [Entry(version, upstream, title, tuple(cves)) for version, upstream, title, cves in rows]


def _valid_row(version: object, upstream: object, title: object, cves: object) -> bool:
    if not (isinstance(version, str) and isinstance(upstream, str) and isinstance(title, str)):
        return False
    if not (isinstance(cves, list) and len(cves) <= MAX_CVES and all(isinstance(c, str) for c in cves)):
        return False
    good_strings = bool(_VERSION.fullmatch(version) and _UPSTREAM.fullmatch(upstream))
    good_title = 0 < len(title) <= MAX_TITLE and _clean(title) == title
    return good_strings and good_title and all(map(_CVE_EXACT.fullmatch, cves))


class _Block:
    """The items of one changelog block, collected line by line."""

    def __init__(self, package: str, version: str) -> None:
        self.package = package
        self.version = version
        self.signs = ""  # the linux version a linux-signed-* block signs
        self.upstream = ""
        self.items: list[tuple[str, list[str]]] = []
        self.open: list[str] | None = None  # lines of the item being read, if wrapped lines may follow

    def feed(self, row: str) -> None:
        text = row.lstrip(" \t")
        indent = len(row[: len(row) - len(text)].expandtabs(8))
        if not text or indent == 0:
            self.open = None  # column 0 inside a block is a comment ("# ..."), never an item
            return
        release = _RELEASE_URL.fullmatch(text) if text.startswith("http") and " " not in text else None
        if release is not None or (indent <= 2 and _AUTHOR.fullmatch(text)):
            self.open, self.upstream = None, release.group(1).rstrip(".") if release else ""
            return
        bullet = _BULLET.fullmatch(text)
        if bullet is None:
            if self.open is not None and len(self.open) <= MAX_WRAPPED:
                self.open.append(text)
            return
        body = bullet.group(2) or ""
        self.open = None
        if indent <= 2:
            if body.startswith("New upstream"):
                # Section header, not a change: its items take their release from the URLs under it.
                urls = (_RELEASE_URL.fullmatch(word) for word in body.split(None, 8)[:8])
                named = next((url for url in urls if url is not None), None)
                self.upstream = named.group(1).rstrip(".") if named else ""
                return
            self.upstream = ""
            signs = _SIGN.fullmatch(body.rstrip("."))
            if signs is not None and self.package.startswith("linux-signed-"):
                self.signs = signs.group(1)
                return
        if len(self.items) >= MAX_ENTRIES:
            raise Malformed(f"changelog block {self.version} lists more than {MAX_ENTRIES} items")
        self.open = [body]
        self.items.append((self.upstream, self.open))

    def flush(self, line: str | None, out: list[Entry]) -> None:
        """Add the block's entries to `out` if it is a linux upload in `line`."""
        signed = self.package.startswith("linux-signed-")
        version = self.signs if signed else self.version  # unsigned without a "Sign kernel from" item
        wanted = (self.package == "linux" or signed) and _VERSION.fullmatch(version) is not None
        if not wanted or (line is not None and not _in_line(version, line)):
            return
        for upstream, lines in self.items:
            text = _clean(" ".join(s.strip() for s in lines))
            if not text:
                continue
            if len(out) >= MAX_ENTRIES:
                raise Malformed(f"changelog lists more than {MAX_ENTRIES} entries")
            cves = tuple(dict.fromkeys(c.upper() for c in _CVE.findall(text)))[:MAX_CVES]
            title = text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…"
            out.append(Entry(version, upstream, title, cves))


def _in_line(version: str, line: str) -> bool:
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    return upstream == line or upstream.startswith((line + ".", line + "~", line + "+"))


def _clean(text: str) -> str:
    """`text` without terminal escape sequences and control characters: titles end up on terminals and in HTML."""
    if "\x1b" in text:
        text = _ESCAPE.sub("", text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    return text.strip()


def _gunzip(data: bytes, what: str) -> bytes:
    """All gzip members of `data`, inflated at most MAX_TEXT bytes at a time so a bomb is refused early."""
    if len(data) > MAX_TEXT:
        raise Malformed(f"{what} is {len(data)} bytes compressed, more than {MAX_TEXT}")
    out = bytearray()
    rest = data
    members = 0
    try:
        # gzip(1) may pad with zeros after the last member; many members would make unused_data copies quadratic
        while members == 0 or (rest and (rest[0] != 0 or rest.strip(b"\0"))):
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise Malformed(f"{what} has more than {MAX_GZIP_MEMBERS} gzip members")
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = rest
            while pending:
                out += inflate.decompress(pending, MAX_TEXT + 1 - len(out))
                if len(out) > MAX_TEXT:
                    raise Malformed(f"{what} inflates past {MAX_TEXT} bytes")
                pending = inflate.unconsumed_tail
            if not inflate.eof:
                raise Malformed(f"{what} is a truncated gzip stream")
            rest = inflate.unused_data
    except zlib.error as e:
        raise Malformed(f"{what} is not gzip data: {_one_line(str(e))}") from None
    return bytes(out)


def _one_line(message: str) -> str:
    return " ".join(message.split())[:200]
