"""Debian, in one place: the mirror the host's apt sources name (`aptsources`), its archives and
their signed indexes (`archive`, `signatures`), .deb files from the inside (`debfile`), and apt
itself for the older compilers a kernel tree needs (`tools`). Kernel sources, the guest suites and
the musl userland all take Debian from here.
"""
