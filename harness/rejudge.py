"""`harness judge`: a finished run judged again from the observations its results.json.gz holds, with
the expectations as they are now, its reports rewritten, and its rows in the history replaced. No
guest is booted: an expectation that gained a citation or an era rule applies to last night's run
(as `kunit.py parse` reads a log again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import history, judge
from harness.errors import UserError
from harness.kit import known, verdict
from harness.report import resultsfile, rundir
from harness.results import RunRecord


@dataclass(frozen=True)
class Rejudged:
    before: RunRecord
    after: RunRecord
    kept: int  # observations kept as they were judged (a program's output cut for storing, an older format)
    stored: int  # results replaced in the history; 0 when it does not hold the run


def rejudge(
    run_dir: Path, expectations: Path, known_file: Path, history_path: Path | None, log: Callable[[str], None]
) -> Rejudged:
    before = resultsfile.read_results(run_dir)
    if before.finished is None and not before.interrupted:
        raise UserError(f"{run_dir}: the run has not finished (or was killed); judge it once it has ended")
    recorded = rundir.read_manifest(run_dir)
    entries = known.load_known(known_file)
    after, kept = judge.run(before, judge.Judge(verdict.load(expectations), entries))
    writer = rundir.RunWriter(run_dir, before.run_id, before.started, [b.boot_id for b in before.boots], known=entries)
    writer.add_boots(after.boots)
    if recorded is not None:
        digest = verdict.expectations_sha256(expectations)
        writer.write_manifest(dataclasses.replace(recorded, expectations_sha256=digest))
    writer.finish(before.finished, interrupted=before.interrupted)
    stored = 0
    if history_path is not None and history_path.is_file() and recorded is not None:
        with history.History(history_path) as db:
            stored = db.replace(after, recorded, source=str(run_dir))
        if stored:
            log(f"history: {stored} results of run {before.run_id} replaced in {history_path}")
    return Rejudged(before, after, kept, stored)
