"""What a finished run prints on the terminal: a row per boot and the results that need a look.

Guest text (messages, releases) goes into rich `Text`, never into markup strings, so a bracket in a
message cannot restyle or break the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.junit import BOOT_CASE
from harness.results import BootResult, Outcome, outcome_counts

_OUTCOME_STYLE = {
    Outcome.PASS: "green",
    Outcome.DEVIATION: "bold red",
    Outcome.NOT_APPLICABLE: "cyan",
    Outcome.OOM_KILLED: "bold red",
    Outcome.PANIC: "bold red",
    Outcome.TIMEOUT: "yellow",
    Outcome.INFRA_ERROR: "yellow",
}


def _boot_counts(boot: BootResult) -> Counter[Outcome]:
    counts = Counter(r.outcome for r in boot.cases)
    if boot.error:
        # Counted as junit.xml counts it: one errored "boot" testcase.
        counts[Outcome.INFRA_ERROR] += 1
    return counts


def _seconds(boot: BootResult, key: str) -> str:
    value = boot.timings.get(key)
    return "-" if value is None else f"{value:.1f}"


def summary_table(boots: Sequence[BootResult]) -> Table:
    """One row per boot: what ran, how long it took to boot/SSH/probe, and results per outcome."""
    table = Table(title="Boots (seconds from QEMU start)", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)  # fmt: skip
    table.add_column("boot", no_wrap=True)
    table.add_column("release", no_wrap=True)
    for header in ("ready", "ssh", "done"):
        table.add_column(header, justify="right")
    for outcome in Outcome:
        table.add_column(outcome.header, justify="right")
    for boot in boots:
        release = (boot.kernel.release if boot.kernel is not None else "") or boot.uname or "-"
        counts = _boot_counts(boot)
        cells: list[Text] = [Text(boot.boot_id), Text(release)]
        cells += [Text(_seconds(boot, key)) for key in ("marker", "ssh", "probe")]
        for outcome in Outcome:
            n = counts[outcome]
            cells.append(Text(str(n), style=_OUTCOME_STYLE[outcome] if n else "dim"))
        table.add_row(*cells)
    return table


def problems_table(boots: Sequence[BootResult]) -> Table:
    """Every result that is neither pass nor n/a, and every boot error; empty when the run is clean."""
    table = Table(title="Deviations and errors", title_justify="left")
    table.add_column("boot")
    table.add_column("case")
    table.add_column("outcome")
    table.add_column("message", overflow="fold")
    for boot in boots:
        if boot.error:
            style = _OUTCOME_STYLE[Outcome.INFRA_ERROR]
            table.add_row(
                Text(boot.boot_id), Text(BOOT_CASE), Text(Outcome.INFRA_ERROR.value, style), Text(boot.error)
            )
        for r in boot.cases:
            if r.outcome in (Outcome.PASS, Outcome.NOT_APPLICABLE):
                continue
            style = _OUTCOME_STYLE[r.outcome]
            table.add_row(Text(boot.boot_id), Text(r.name), Text(r.outcome.value, style), Text(r.message))
    return table


def print_summary(boots: Sequence[BootResult], console: Console) -> None:
    console.print(summary_table(boots))
    problems = problems_table(boots)
    if problems.row_count:
        console.print(problems)
    totals = outcome_counts(boots)
    line = ", ".join(f"{totals[outcome.value]} {outcome.header}" for outcome in Outcome)
    boot_errors = sum(1 for boot in boots if boot.error)
    if boot_errors:
        line += f"; {boot_errors} boot error{'s' if boot_errors != 1 else ''}"
    console.print(Text(f"{len(boots)} boots: {line}"))
