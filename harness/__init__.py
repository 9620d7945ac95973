"""harness: boot a matrix of Linux kernels in QEMU and record how each treats mmap(MAP_LOCKED)."""

__version__ = "0.1.0"
