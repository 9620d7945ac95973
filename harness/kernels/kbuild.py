"""Kernels built from a git tree: out of tree, a small config, cached by (tree, config, compiler).

The user's work tree is never touched: each repository gets a shared clone in the cache
(`git clone --shared`: the objects stay in the user's repository) that is checked out at the
wanted commit, and one persistent out-of-tree build directory, so going from one commit to the
next (as a bisect does) recompiles only what changed. The config is `base` (tinyconfig) with
images/kernel.config merged on top and `make olddefconfig`; everything the guest needs is built
in, so the guest loads no modules, unless a fragment asks for modules (`=m`): they are then built
and installed into the build as plain .ko files, and the guest loads them as it loads a Debian
kernel's. ccache is used when it is installed.

A finished build is stored under builds/<key>/, key = hash of (tree, base, fragment, compiler),
with build.json saying what was built, how long it took and which config it used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness import REPO, kernels, processes
from harness.cache.lease import UNLEASED, Leases, locked
from harness.errors import InfraError, UserError
from harness.kernels import bzimage

FRAGMENT = REPO / "images" / "kernel.config"
BUILD_FILE = "build.json"
LOG_TAIL = 25  # lines of a failed build's log in the error


class BuildFailure(InfraError):
    """The kernel did not build: for a bisect, a commit to skip; for a matrix run, that kernel's boots fail."""


class Tree(Protocol):
    """What to build: a matrix's `git:` kernel spec."""

    @property
    def repo(self) -> Path: ...

    @property
    def rev(self) -> str: ...

    @property
    def config(self) -> Path | None: ...  # fragment; None: images/kernel.config

    @property
    def base(self) -> str: ...  # tinyconfig or defconfig

    @property
    def compiler(self) -> str: ...  # gcc, or gcc-N (an older tree may need an older one)

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Source:
    """A git kernel spec resolved to a commit."""

    spec: Tree
    commit: str
    tree: str
    title: str


def git(repo: Path, *args: str, check: bool = True) -> str:
    """`git -C repo ARGS`, its output stripped; with `check`, a failure is bad input quoting git."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise InfraError("git is not installed; install git (make deps does)") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"git -C {repo} {' '.join(args)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout.strip()


def resolve(spec: Tree) -> Source:
    """The commit and tree `spec.rev` names; a bad repository or revision is bad input."""
    try:
        commit = git(spec.repo, "rev-parse", "--verify", "--quiet", f"{spec.rev}^{{commit}}")
        tree = git(spec.repo, "rev-parse", f"{commit}^{{tree}}")
        title = git(spec.repo, "log", "-1", "--format=%s", commit)
    except UserError:
        raise UserError(f"git {spec.repo}: no commit {spec.rev!r}; give a commit, tag or branch of it") from None
    return Source(spec, commit, tree, title)


def fragment_text(spec: Tree) -> str:
    path = spec.config or FRAGMENT
    try:
        return path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the config fragment: {e.strerror}") from None


def fragment_options(text: str) -> dict[str, str]:
    """CONFIG_X=value lines and "# CONFIG_X is not set" lines of a fragment, as Kconfig writes them."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip()):
            out[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip()):
            out[m.group(1)] = "n"
    return out


def missing_options(wanted: dict[str, str], config: str) -> list[str]:
    """Fragment options the final .config does not have as asked (too old a kernel, a dependency off)."""
    have = fragment_options(config)
    return sorted(k for k, v in wanted.items() if have.get(k, "n") != v)


def compiler(cc: str = "gcc") -> str:
    """The compiler's identity, part of the cache key: another gcc makes another kernel."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise InfraError(f"{cc} is not installed; install gcc, make, flex, bison, bc, libelf-dev (make deps)") from None
    return out.splitlines()[0].strip()


def make_compiler(cc: str, ccache: bool) -> list[str]:
    """make's CC (and HOSTCC: an old tree's host tools may not build with today's gcc either)."""
    if cc == "gcc":
        return ["CC=ccache gcc"] if ccache else []
    return [f"CC=ccache {cc}" if ccache else f"CC={cc}", f"HOSTCC={cc}"]


def build_key(source: Source, fragment: str, cc: str) -> str:
    doc = json.dumps(
        {"tree": source.tree, "base": source.spec.base, "fragment": fragment, "compiler": cc}, sort_keys=True
    )
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def _repo_id(repo: Path) -> str:
    return hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]


def _run(argv: Sequence[str], log: Path, env: dict[str, str], what: str, kept: Path | None = None) -> None:
    """Run a build step in its own process group, output appended to `log`; killed with its children
    on any exit (Ctrl-C included), so no compiler outlives the harness. A failure names `kept`, where
    the caller keeps the log of a failed build (`log` itself, when None)."""
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        # SIGINT, as below, if the harness dies: make then deletes the targets it was writing.
        proc = subprocess.Popen(
            [*processes.lifeline("INT"), *argv], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait()
        except BaseException:
            # SIGINT first: make then deletes the targets it was writing; a half-written object
            # newer than its source would otherwise pass for built in the next, incremental, build.
            for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            raise
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        raise BuildFailure(f"{what} failed (exit {code}); last lines of {kept or log}:\n" + "\n".join(tail))


def _checkout(source: Source, clone: Path, log: Path, kept: Path) -> None:
    env = dict(os.environ)
    if not (clone / ".git").exists():
        clone.parent.mkdir(parents=True, exist_ok=True)
        _run(
            ["git", "clone", "--quiet", "--shared", "--no-checkout", str(source.spec.repo), str(clone)],
            log,
            env,
            "git clone",
            kept,
        )
    # Objects come from the user's repository (alternates), so any commit made there since is here.
    _run(
        ["git", "-C", str(clone), "checkout", "--quiet", "--force", "--detach", source.commit],
        log,
        env,
        "git checkout",
        kept,
    )


def folder(source: Source, cache: Path) -> Path:
    """Where the kernel of `source` is (or will be) built in the cache."""
    return cache / "builds" / build_key(source, fragment_text(source.spec), compiler(source.spec.compiler))


def build(
    source: Source, cache: Path, log: Callable[[str], None], label: str = "", leases: Leases = UNLEASED
) -> kernels.Kernel:
    """The kernel of `source`, built now or taken from the cache (leased: harness.cache.lease)."""
    fragment = fragment_text(source.spec)
    cc = compiler(source.spec.compiler)
    done = folder(source, cache)
    root, key = done.parent, done.name
    repo_id = _repo_id(source.spec.repo)

    def make() -> None:
        # One build per repository at a time, whatever it builds: its clone and build directory are shared.
        with locked(root / f".{repo_id}.lock"):
            if (done / BUILD_FILE).is_file():  # built by a caller that leases nothing, while this one waited
                return
            log(
                f"building {source.commit[:12]} ({source.title}) from {source.spec.repo}; about 10 min the first "
                "time, then only what changed"
            )
            _build(source, fragment, cc, cache, root, key, repo_id)

    leases.ensure(done, (done / BUILD_FILE).is_file, make)
    with contextlib.suppress(OSError):
        os.utime(done)  # its last use, which `harness cache prune --older-than` reads
    return load(done, label or source.spec.label)


def _build(source: Source, fragment: str, cc: str, cache: Path, root: Path, key: str, repo_id: str) -> None:
    clone = cache / "src" / repo_id
    work = cache / "kbuild" / repo_id
    work.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        build_log = stage / "build.log"
        failed = root / f"{key}.failed.log"  # a failed build's log stays here; its stage is deleted
        started = time.monotonic()
        _checkout(source, clone, build_log, failed)
        env = _build_env(cache, clone, source)
        make = [
            "make",
            "-C",
            str(clone),
            f"O={work}",
            "ARCH=x86_64",
            f"-j{os.cpu_count() or 1}",
            *make_compiler(source.spec.compiler, shutil.which("ccache") is not None),
        ]
        (stage / "fragment.config").write_text(fragment)
        _run([*make, source.spec.base], build_log, env, f"make {source.spec.base}", failed)
        _run(
            [
                str(clone / "scripts" / "kconfig" / "merge_config.sh"),
                "-m",
                "-O",
                str(work),
                str(work / ".config"),
                str(stage / "fragment.config"),
            ],
            build_log,
            env,
            "merging the config fragment",
            failed,
        )
        _run([*make, "olddefconfig"], build_log, env, "make olddefconfig", failed)
        _run([*make, "bzImage"], build_log, env, "make bzImage", failed)
        config = (work / ".config").read_text()
        release = subprocess.run(
            [*make, "-s", "kernelrelease"], capture_output=True, text=True, env=env, check=False
        ).stdout.strip().splitlines()[-1:] or ["unknown"]
        module_count = 0
        if has_modules(config):
            module_count = _modules(make, stage, release[0], build_log, env, failed)
        seconds = round(time.monotonic() - started, 1)
        shutil.copyfile(work / "arch" / "x86" / "boot" / "bzImage", stage / "bzImage")
        vmlinux = work / "vmlinux"
        has_pvh = vmlinux.is_file() and bzimage.has_pvh_note(vmlinux.read_bytes())
        if has_pvh:
            shutil.copyfile(vmlinux, stage / "vmlinux")
        (stage / "config").write_text(config)
        meta = {
            "repo": str(source.spec.repo),
            "rev": source.spec.rev,
            "commit": source.commit,
            "tree": source.tree,
            "title": source.title,
            "base": source.spec.base,
            "fragment": fragment,
            "compiler": cc,
            "cc": source.spec.compiler,
            "ccache": shutil.which("ccache") is not None,
            "seconds": seconds,
            "release": release[0],
            "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "missing_options": missing_options(fragment_options(fragment), config),
            "pvh": has_pvh,
            "modules": module_count,
        }
        (stage / BUILD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(stage, root / key)
    except BaseException as e:
        if isinstance(e, BuildFailure):
            with contextlib.suppress(OSError):
                os.replace(build_log, failed)
        shutil.rmtree(stage, ignore_errors=True)
        raise


def has_modules(config: str) -> bool:
    """Does the .config build anything as a module (a fragment that asks for `=m`)?"""
    lines = config.splitlines()
    return "CONFIG_MODULES=y" in lines and any(re.fullmatch(r"CONFIG_\w+=m", line) for line in lines)


def _modules(make: list[str], stage: Path, release: str, log: Path, env: dict[str, str], failed: Path) -> int:
    """Build the modules and install them, stripped and as plain .ko files, under stage/lib/modules/
    <release>, with the modules.builtin the guest's module resolution reads; their number."""
    _run([*make, "modules"], log, env, "make modules", failed)
    _run(
        [*make, f"INSTALL_MOD_PATH={stage}", "INSTALL_MOD_STRIP=1", "DEPMOD=true", "modules_install"],
        log,
        env,
        "make modules_install",
        failed,
    )
    tree = stage / "lib" / "modules" / release
    for link in ("build", "source"):  # into the build directory, which the next build changes
        (tree / link).unlink(missing_ok=True)
    return sum(1 for p in tree.rglob("*.ko*") if p.is_file())


def _build_env(cache: Path, clone: Path, source: Source) -> dict[str, str]:
    env = dict(os.environ)
    # Same commit, same compiler: the same bits, whoever builds it when.
    stamp = git(clone, "log", "-1", "--format=%cD", source.commit)
    env.update(
        KBUILD_BUILD_TIMESTAMP=stamp,
        KBUILD_BUILD_USER="harness",
        KBUILD_BUILD_HOST="harness",
        CCACHE_DIR=str(cache / "ccache"),
        CCACHE_BASEDIR=str(clone),
    )
    env.pop("MAKEFLAGS", None)  # a parent make's jobserver would serialise this one
    return env


def metadata(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / BUILD_FILE).read_text())
    except (OSError, ValueError) as e:
        raise InfraError(f"{folder / BUILD_FILE}: unreadable build record ({e}); delete {folder}") from None
    if not isinstance(doc, dict):
        raise InfraError(f"{folder / BUILD_FILE}: not a build record; delete {folder}")
    return doc


def load(folder: Path, label: str) -> kernels.Kernel:
    meta = metadata(folder)
    image = folder / "bzImage"
    vmlinux = folder / "vmlinux"
    release = str(meta.get("release") or "unknown")
    tree = folder / "lib" / "modules" / release
    return kernels.Kernel(
        label,
        release,
        image,
        vmlinux if vmlinux.is_file() else None,
        tree if tree.is_dir() else None,
        hashlib.sha256(image.read_bytes()).hexdigest(),
        None,
        None,
        (),
        f"git:{meta.get('repo')}@{str(meta.get('commit'))[:12]}",
        folder / "config" if (folder / "config").is_file() else None,
    )
