"""History store: every run's results in one SQLite file, and views of behaviour across kernel versions.

One module per concept; each imports only those listed before it:

- store.py: writing rows as schema 3 stores them (strings interned, observations as zlib deltas)
  and keeping `tallies`, what the views read, up to date on every append;
- schema.py: the tables, and MIGRATIONS / SCHEMA_VERSION (`PRAGMA user_version`);
- timeline.py: Timeline and Point, and how one is built in kernel version order;
- db.py: History: open and migrate a file, record and import runs, the read queries;
- views.py: render() and behaviour(), timelines for people on a rich Console.

docs/history.md describes tables, views and figures.
"""

from __future__ import annotations

from harness.history.db import BUSY_TIMEOUT_S, DEFAULT_PATH, History
from harness.history.schema import MIGRATIONS, SCHEMA_VERSION, Migration
from harness.history.timeline import Point, Timeline
from harness.history.views import behaviour, render

__all__ = [
    "BUSY_TIMEOUT_S",
    "DEFAULT_PATH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "History",
    "Migration",
    "Point",
    "Timeline",
    "behaviour",
    "render",
]
