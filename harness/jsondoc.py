"""Reading back the JSON files the harness writes (results.json, manifest.json, a bisect's state).

Such a file may come from another machine, an older harness or a careless edit, so it is input
like any other: read with a size bound, parsed without letting a huge number or deep nesting
raise, and every value the harness uses checked for its type. Anything else is bad input naming
the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import UserError
from harness.files import read_text

T = TypeVar("T")


def load(path: Path, limit: int, what: str) -> Any:
    """The JSON document in `path` (at most `limit` bytes; `what`: "results.json"); UserError naming
    the file otherwise."""
    text = read_text(path, limit, what)
    try:
        return _encodable(json.loads(text, parse_constant=_no_constant))
    except (ValueError, RecursionError) as e:  # a 5000-digit number, 200k-deep nesting, bad JSON
        raise UserError(
            f"{path}: cannot read it as JSON ({str(e)[:200] or type(e).__name__}); give a {what} the harness wrote"
        ) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with every lone surrogate (JSON can escape one: "\\ud800") made U+FFFD: such a string
    can be neither written as UTF-8, stored in SQLite nor printed."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


class Doc:
    """A JSON object being read; every accessor checks the value's type and names its key when wrong.

    A missing key (or null) reads as the type's empty value unless `required` says otherwise:
    files of older runs lack what was added since.
    """

    def __init__(self, doc: object, where: str, what: str = "a file the harness wrote") -> None:
        self.where = where
        self.what = what
        if not isinstance(doc, dict):
            place = f"{where}top level" if where.endswith(": ") else where.rstrip(".")
            raise UserError(f"{place}: not an object; give {what}")
        self.doc: dict[str, Any] = doc

    def _bad(self, key: str, kind: str) -> UserError:
        return UserError(f"{self.where}{key}: not {kind}; give {self.what}")

    def has(self, key: str) -> bool:
        return self.doc.get(key) is not None

    def _get(self, key: str, required: bool) -> Any:
        value = self.doc.get(key)
        if value is None and required:
            raise UserError(f"{self.where}{key}: missing; give {self.what}")
        return value

    def text(self, key: str, required: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def integer(self, key: str, required: bool = False) -> int:
        value = self._get(key, required)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        return self.integer(key) if self.has(key) else None

    def number(self, key: str) -> float:
        value = self.doc.get(key)
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._bad(key, "a finite number")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return bool(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return value

    def texts(self, key: str) -> list[str]:
        values = self._list(key, False)
        if not all(isinstance(v, str) for v in values):
            raise self._bad(key, "a list of strings")
        return values

    def items(self, key: str, read: Callable[[Doc], T], required: bool = False) -> list[T]:
        return [read(Doc(v, f"{self.where}{key}[{i}].", self.what)) for i, v in enumerate(self._list(key, required))]

    def each(self, key: str, read: Callable[[Doc], T], default: T) -> T:
        value = self.doc.get(key)
        return default if value is None else read(Doc(value, f"{self.where}{key}.", self.what))

    def _list(self, key: str, required: bool) -> list[Any]:
        value = self._get(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value
