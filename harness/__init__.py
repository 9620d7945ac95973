"""harness: boot a matrix of Linux kernels in QEMU and record how each treats mmap(MAP_LOCKED).

The package is laid out by stage (docs/architecture.md is the map): `plan` (the matrix), `debian`
and `kernels` (what boots), `kit` (what goes into a guest and how the harness reaches it), `boot`
(QEMU, saved guests, the boot's state machine), `judge` (observations into verdicts), `report`
(the run directory), `history` (results across runs), `cli`; `run`, `merge`, `replay`, `rejudge`,
`bisect` and `prune` tie the stages together.
"""

from pathlib import Path

__version__ = "0.1.0"

# The source tree the package is part of: guest-tests/ (the probe, its expectations) and images/
# (the guest's /init, the kernel config fragment) are read from beside it.
REPO = Path(__file__).resolve().parent.parent
