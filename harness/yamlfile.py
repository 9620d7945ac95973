"""YAML files people write (matrices, known deviations): read with line numbers, so that every error
names the file, the line and the key, in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

KeyPath = tuple[object, ...]  # keys and list indexes from the document's top: ("kernels", 0, "debian")


class FieldError(UserError):
    """Bad input at one key of a document; the message names file, line and key."""

    def __init__(self, origin: str, path: KeyPath, reason: str) -> None:
        super().__init__(f"{origin}: {reason}")
        self.path = path
        self.reason = reason


MAX_NODES = 100_000  # a matrix of every Debian build is a few thousand


def read(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data; bad YAML is one line naming source and line.

    Anchors and aliases are refused: a file of a few hundred bytes could otherwise expand to
    billions of values (or to itself), and a matrix never needs them. Nesting deeper than Python
    can follow is refused too.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_tree(root, source)
        return root, yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "1"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{source}:{line}: invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to be a matrix or known-deviations file") from None
    except ValueError as e:  # a value YAML reads but Python will not hold, such as a 5000-digit number
        raise UserError(f"{source}: invalid YAML: {str(e)[:200]}") from None


def _check_tree(root: yaml.Node | None, source: str) -> None:
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            line = node.start_mark.line + 1
            raise UserError(
                f"{source}:{line}: anchors and aliases (&name, *name) are not supported; write the value "
                "out where it is used"
            )
        seen.add(id(node))
        if len(seen) > MAX_NODES:
            raise UserError(f"{source}: more than {MAX_NODES} values; not a file a person wrote")
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


class Where:
    """Maps a key path in the parsed document to its line, from YAML's node tree."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        if root is not None:
            self._walk(root, ())

    @property
    def base_dir(self) -> Path:
        """What relative paths in the document are relative to: its file's directory (else the cwd)."""
        return Path(self.source).parent if not self.source.startswith("<") else Path.cwd()

    def _walk(self, node: yaml.Node, path: KeyPath) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                # errors look keys up as parsed (123, True), not as written ("123", "yes")
                key = yaml.SafeLoader("").construct_object(k) if isinstance(k, yaml.ScalarNode) else k.value
                self.lines[(*path, key)] = k.start_mark.line + 1
                self._walk(v, (*path, key))
                self.lines[(*path, key)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def origin(self, path: KeyPath) -> str:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        key = ".".join(str(p) for p in path) or "(top level)"
        return f"{self.source}:{self.lines.get(probe, 1)}: {key}"

    def error(self, path: KeyPath, message: str) -> FieldError:
        return FieldError(self.origin(path), path, message)

    def optional_file(self, value: object, path: KeyPath, what: str) -> Path | None:
        """A file the document names (relative to it, `~` expanded), or None where it names none;
        bad input when there is no such file (`what`: "the kernel's .config")."""
        if value is None:
            return None
        file = self.base_dir / Path(str(value)).expanduser()
        if not file.is_file():
            raise self.error(path, f"{file} is not a file; give {what}")
        return file
