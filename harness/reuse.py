"""A nightly re-runs only what is new: a boot whose inputs equal a stored boot's takes its results.

Results are deterministic (bench/determinism.py: 0 of 1952 differ across runs and machines), so a
boot of the same kernel, guest image, data disk, QEMU and command line (RAM, accelerator, devices,
transport), probe and case timeout as one the history holds would only observe again what was
observed. Such a boot is not booted: its results are the stored boot's observations, judged
afresh (a new expectation or known-deviations entry applies), and the run says which boots were
reused and from which run. A boot is reused whole or not at all: every planned (case, limit,
user) must have an answer that says something of the kernel (no timeout, no infrastructure
error). `--fresh` boots everything; `replay` always boots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from harness import judge
from harness.boot import snapshot, vm
from harness.history import History
from harness.plan.matrix import BootPlan
from harness.results import BootResult

FORMAT = 1  # what `inputs` digests; a new format reuses nothing stored before it


def inputs(config: vm.VMConfig, probe_sha256: str, plan: BootPlan) -> str:
    """The digest of everything a boot's results depend on; files by content, not by path (two
    caches hold the same kernel at different paths)."""
    files = {
        str(p): digest
        for p in (config.kernel, config.initrd, config.disk)
        if p is not None and (digest := snapshot.digest(p))
    }
    argv = []
    for arg in dataclasses.replace(config, port=0, channel=None).argv():
        for path, digest in files.items():
            arg = arg.replace(path, f"sha256:{digest}")
        argv.append(arg)
    doc = {
        "format": FORMAT,
        "qemu": vm.qemu_version(),
        "argv": argv,
        "probe": probe_sha256,
        "case_timeout": plan.timeouts.case,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Reuse:
    """Where a run finds boots to reuse (its history; None: nowhere), and how it judges them."""

    history: Path | None
    judging: judge.Judge

    def fill(self, plan: BootPlan, result: BootResult) -> bool:
        """Give `result` the results of a stored boot with its inputs (`result.inputs`), judged
        afresh; False, and `result` untouched, when the history has none."""
        if self.history is None or not result.inputs or not self.history.is_file():
            return False
        wanted = [(case, r.memlock_label, r.user) for r in plan.runs for case in r.cases]
        with History(self.history) as db:
            found = db.reusable(result.inputs, wanted)
        if found is None:
            return False
        cases = [dataclasses.replace(c, boot_id=result.boot_id) for c in found.results]
        judged, _ = self.judging.boot(dataclasses.replace(result, cases=cases))
        result.cases, result.reused_from = judged.cases, found.run_id
        result.uname, result.memtotal_kb = found.uname, found.memtotal_kb
        return True
