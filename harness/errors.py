"""The two failure families and the exit codes. Only the CLI turns failures into exit codes and
one-line messages; a finished run's exit code comes from its results (results.exit_code)."""

EXIT_OK = 0  # every observation as expected
EXIT_FINDINGS = 1  # some deviated (or a probe child was OOM-killed, or a guest panicked)
EXIT_USAGE = 2  # bad input
EXIT_INFRA = 3  # the machinery failed, or some cases have no answer
EXIT_INTERNAL = 70  # a bug in the harness (sysexits' EX_SOFTWARE): never a finding, never the input's fault


class UserError(Exception):
    """Bad input from the user (matrix file, path, flag): exit code 2, one line, no traceback."""


class InfraError(Exception):
    """The machinery failed (download, image, QEMU, SSH): exit code 3 when it stops the whole run."""
