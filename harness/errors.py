"""The two failure families. Only the CLI turns them into exit codes and one-line messages."""


class UserError(Exception):
    """Bad input from the user (matrix file, path, flag): exit code 2, one line, no traceback."""


class InfraError(Exception):
    """The machinery failed (download, image, QEMU, SSH): exit code 3 when it stops the whole run."""
