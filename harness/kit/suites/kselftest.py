"""`kselftest-mm`: the kernel's own memory-locking selftests (tools/testing/selftests/mm, `vm` before
6.3), from the tree that matches each kernel, built static on the host and run in the guest.

The tree: for a Debian kernel, Debian's `linux-source-X.Y` of the same version from the suite
the kernel came from, else the nearest version of its line, else the nearest line (the manifest
says which); for a `git:` kernel, the commit it was built from. Its uapi headers are installed
(`make headers`) and each program is compiled with them, static, with the helper files
it includes (vm_util.c...) and libcap where it uses capabilities. Cached by (tree, recipe,
compiler). The programs chosen are the memory-locking and populate tests `run_vmtests.sh` runs,
each well under a minute in a 256M TCG guest: see PROGRAMS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from harness.debian import debfile
from harness.debian.archive import deb_of
from harness.errors import InfraError
from harness.kernels import Kernel
from harness.kernels.sources import debian
from harness.kernels.sources.base import Context
from harness.kit import ktap
from harness.kit.suites import programs
from harness.kit.suites.base import Built, Judged, Judging, Step, Under
from harness.kit.suites.programs import Run
from harness.results import Outcome

RECIPE = 1  # bump when the build below changes what it makes
# run_vmtests.sh's memory-locking and populate tests (it runs on-fault-limit as nobody: the test
# lowers its own limit and expects the kernel to refuse; as root it measures nothing).
PROGRAMS: tuple[str, ...] = ("mlock2-tests", "mlock-random-test", "on-fault-limit", "map_populate", "mremap_dontunmap")
# Who run_vmtests.sh runs each as, the runs where it means something: mlock2-tests and
# mlock-random-test as root (the latter drops CAP_IPC_LOCK and sets limits itself), on-fault-limit as
# nobody (as root the limit it tests does not apply). Elsewhere a program is not applicable.
AS_ROOT, AS_USER = "root", "unprivileged"
RUN_AS = {"mlock2-tests": AS_ROOT, "mlock-random-test": AS_ROOT, "on-fault-limit": AS_USER}
KSFT_SKIP = 4  # tools/testing/selftests/kselftest.h
SIGKILL_STATUS = 128 + 9


class KselftestMM:
    name = "kselftest-mm"
    programs = PROGRAMS

    def build(self, kernel: Kernel, ctx: Context, log: Callable[[str], None]) -> Built:
        tree, provenance = _tree(kernel, ctx)
        key = hashlib.sha256(
            json.dumps(
                {"tree": provenance["key"], "recipe": RECIPE, "programs": PROGRAMS, "cc": _gcc()}, sort_keys=True
            ).encode()
        ).hexdigest()[:32]
        entry = ctx.cache / "suites" / self.name  # what prune takes as one: every tree's build
        done = entry / key

        def make() -> None:
            log(f"building kselftest mm from {provenance['what']} (a few minutes, once)")
            _build(tree, done)

        # One tree's build at a time (another tree's goes on meanwhile), leased: harness.cache.lease.
        ctx.leases.ensure(entry, (done / "built.json").is_file, make, part=key)
        with contextlib.suppress(OSError):
            os.utime(entry)  # its last use, which `harness cache prune --older-than` reads
        record = json.loads((done / "built.json").read_text())
        programs = {p: done / p for p in PROGRAMS if (done / p).is_file()}
        missing = {p: str(record["missing"].get(p, "not built")) for p in PROGRAMS if p not in programs}
        return Built(programs, missing, {k: v for k, v in provenance.items() if k != "key"})

    def steps(self, cases: Sequence[str], under: Under, built: Built | str) -> Iterator[Step]:
        return programs.steps(self, cases, under, built)

    def judge(self, case: str, observation: Mapping[str, Any], judging: Judging) -> list[Judged]:
        return programs.judge(self, case, observation)

    def read(self, program: str, run: Run) -> list[Judged]:
        return judge(self.name, program, run)

    def applies(self, program: str, user: str, memlock: str) -> str:
        """ "" when `program` means something run as `user` under the limit labelled `memlock`, else
        why not."""
        kind = RUN_AS.get(program)
        if kind is not None and (kind == AS_ROOT) != (user == "root"):
            return f"run_vmtests.sh runs {program} {'as root' if kind == AS_ROOT else 'unprivileged (as nobody)'}"
        if program == "on-fault-limit" and memlock == "0":
            # Its mlockall(MCL_ONFAULT | MCL_FUTURE) is refused first (mlock(2) EPERM: unprivileged,
            # RLIMIT_MEMLOCK 0), before the limit it tests is reached.
            return "at limit 0 its mlockall() is refused (EPERM) before it tests anything"
        return ""


MM = KselftestMM()


# --- the tree ------------------------------------------------------------------------------------


def _tree(kernel: Kernel, ctx: Context) -> tuple[Callable[[Path], None], dict[str, Any]]:
    """How to unpack the kernel's tree into a folder, and what it is."""
    if kernel.source.startswith("git:"):
        meta = json.loads((kernel.image.parent / "build.json").read_text())
        repo, commit, tree = Path(meta["repo"]), str(meta["commit"]), str(meta["tree"])

        def from_git(out: Path) -> None:
            out.mkdir()
            with subprocess.Popen(
                ["git", "-C", str(repo), "archive", "--format=tar", commit], stdout=subprocess.PIPE
            ) as proc:
                untar = subprocess.run(
                    ["tar", "-x", "-C", str(out)], stdin=proc.stdout, capture_output=True, check=False
                )
            if proc.returncode != 0 or untar.returncode != 0:
                raise InfraError(
                    f"git archive {commit} of {repo} | tar failed (exit {proc.returncode}, {untar.returncode})"
                )

        # What the build reads; a bisect's steps that change only mm/ share one build.
        parts = [
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", f"{commit}:{p}"], capture_output=True, text=True, check=False
            ).stdout.strip()
            for p in _READS
        ]
        key = f"git:{hashlib.sha256(' '.join(parts).encode()).hexdigest()}" if all(parts) else f"git:{tree}"
        return from_git, {"what": f"{repo}@{commit[:12]}", "tree": f"git:{repo}@{commit}", "exact": True, "key": key}
    return _debian_source(kernel, ctx)


# The parts of a tree the build reads: the selftests, what `make headers` makes the uapi headers from.
_READS = ("tools", "include/uapi", "arch/x86/include/uapi", "arch/x86/entry/syscalls", "scripts", "Makefile")


def _debian_source(kernel: Kernel, ctx: Context) -> tuple[Callable[[Path], None], dict[str, Any]]:
    if not kernel.debs or not kernel.version:
        raise InfraError(f"kernel {kernel.label}: no Debian source to build kselftest from (not a Debian kernel)")
    mirrors = debian.mirrors(ctx)
    candidates = []
    for suite in dict.fromkeys(d.suite for d in kernel.debs):
        with contextlib.suppress(InfraError):
            archive = mirrors(suite)
            candidates += [
                (s, suite, archive)
                for s in archive.packages(suite, "linux-source-")
                if re.fullmatch(r"linux-source-\d+\.\d+", s["Package"])
            ]
    if not candidates:
        raise InfraError(f"kernel {kernel.label}: no linux-source package in {', '.join(d.suite for d in kernel.debs)}")
    stanza, suite, archive = nearest(candidates, kernel.version)
    deb = deb_of(stanza, suite)
    path = archive.fetch_deb(deb)

    def from_deb(out: Path) -> None:
        with debfile.data_tar(path) as data:
            for member in data:
                if member.name.endswith(".tar.xz") and "/linux-source-" in member.name:
                    src = data.extractfile(member)
                    assert src is not None
                    # The tree's own tarball (signed with the .deb) goes to tar: 4x faster than Python's.
                    inner = out.parent / "linux-source.tar.xz"
                    with open(inner, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                    out.mkdir()
                    proc = subprocess.run(
                        ["tar", "-xf", str(inner), "-C", str(out), "--no-same-owner"],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    inner.unlink()
                    if proc.returncode != 0:
                        raise InfraError(f"{deb.package} {deb.version}: tar: {proc.stderr.strip()[-300:]}")
                    return
        raise InfraError(f"{deb.package} {deb.version}: no source tarball in the package")

    exact = Version(deb.version) == Version(kernel.version)
    return from_deb, {
        "what": f"{deb.package} {deb.version} ({suite})",
        "package": deb.package,
        "version": deb.version,
        "suite": suite,
        "exact": exact,
        "key": deb.key,
    }


def nearest(candidates: list[tuple[Any, str, Any]], version: str) -> tuple[Any, str, Any]:
    """The kernel's own source version; else its line's newest not above it (oldest above, if none
    is); else the same among every line."""
    want = Version(version)
    exact = [c for c in candidates if Version(c[0]["Version"]) == want]
    if exact:
        return exact[0]
    line = ".".join(str(want.upstream_version).split(".")[:2])
    pool = [c for c in candidates if c[0]["Package"] == f"linux-source-{line}"] or candidates
    below = [c for c in pool if Version(c[0]["Version"]) <= want]
    if below:
        return max(below, key=lambda c: Version(c[0]["Version"]))
    return min(pool, key=lambda c: Version(c[0]["Version"]))


def _gcc() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        raise InfraError("gcc is not installed; install gcc (make deps does)") from None


# --- the build -------------------------------------------------------------------------------------


def _build(unpack: Callable[[Path], None], done: Path) -> None:
    done.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kselftest-", dir=done.parent) as tmp:
        work = Path(tmp)
        unpack(work / "src")
        tops = [p for p in (work / "src").iterdir() if p.is_dir()]
        top = tops[0] if len(tops) == 1 and not (work / "src" / "Makefile").exists() else work / "src"
        log = work / "build.log"
        # `make headers` (the tree's usr/include), as the selftests' own KHDR_INCLUDES: headers_install
        # would also want rsync.
        with open(log, "wb") as out:
            proc = subprocess.run(
                ["make", "-C", str(top), "ARCH=x86_64", "headers"], stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-6:]
            raise InfraError("make headers of the kselftest tree failed: " + " | ".join(tail))
        selftests = top / "tools" / "testing" / "selftests"
        source = next((selftests / d for d in ("mm", "vm") if (selftests / d).is_dir()), None)
        stage = work / "out"
        stage.mkdir()
        missing: dict[str, str] = {}
        for program in PROGRAMS:
            why = (
                _compile(program, source, selftests, top / "usr" / "include", stage / program)
                if source
                else "the tree has no tools/testing/selftests/mm or vm"
            )
            if why:
                missing[program] = why
        (stage / "built.json").write_text(
            json.dumps({"missing": missing, "dir": source.name if source else None}, indent=2) + "\n"
        )
        if done.exists():
            shutil.rmtree(done)
        os.replace(stage, done)


def _compile(program: str, source: Path, selftests: Path, include: Path, out: Path) -> str:
    """Build one program; "" when built, else why not."""
    main = source / f"{program}.c"
    if not main.is_file():
        return f"{main.relative_to(selftests.parent.parent.parent)}: not in this kernel's tree"
    text = main.read_text(errors="replace")
    helpers = [source / f"{h}.c" for h in re.findall(r'#include "([\w-]+)\.h"', text) if (source / f"{h}.c").is_file()]
    libs = ["-lcap"] if "sys/capability.h" in text else []
    argv = [
        "gcc",
        "-static",
        "-O2",
        "-w",
        f"-I{include}",
        f"-I{selftests}",
        f"-I{source}",
        str(main),
        *map(str, helpers),
        "-lrt",
        "-lpthread",
        *libs,
        "-o",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return "does not build here: " + (lines[-1][:300] if lines else f"gcc exit {proc.returncode}")
    return ""


# --- results -------------------------------------------------------------------------------------------


def judge(suite: str, program: str, run: Run) -> list[Judged]:
    """The program's own result (its exit status, as the kselftest runner reads it) and one per
    KTAP result it printed, subtests as `program/subtest`."""
    doc = _with_errors(ktap.parse(run.output), run.errors)
    case = f"{suite}:{program}"
    subs = _subtests(case, doc.results)
    failed = [j.case.split("/", 1)[1] for j in subs if j.outcome is Outcome.DEVIATION]
    status = run.exit_status
    obs: dict[str, Any] = {
        "exit_status": status,
        "oom_kills": run.oom_kills,
        "seconds": round(run.seconds, 3),
        "ktap": doc.version or None,
        "plan": doc.plan,
        "results": len(doc.results),
        "missing": doc.missing,
        "bailed_out": doc.bailed_out,
        "diagnostics": doc.diagnostics[-10:],
        "output": run.output,
        "stderr": run.errors,
    }
    if status is None:
        outcome, message = Outcome.INFRA_ERROR, "the program's run ended without its exit status"
    elif run.timed_out:
        outcome, message = Outcome.TIMEOUT, f"killed after {run.seconds:.0f} s, the suite's timeout"
    elif status == SIGKILL_STATUS and run.oom_kills:
        outcome, message = Outcome.OOM_KILLED, "killed by the OOM killer"
    elif status == 0 and not failed:
        outcome, message = Outcome.PASS, f"exit 0; {_counts(subs)}"
    elif status == KSFT_SKIP:
        outcome, message = Outcome.NOT_APPLICABLE, "skipped (exit 4, KSFT_SKIP): " + _last(doc)
    else:
        how = f"died by signal {status - 128}" if 128 < status <= 128 + 64 else f"exit {status}"
        detail = f"; failed: {', '.join(failed[:5])}" if failed else f"; {_last(doc)}"
        lost = f"; {doc.missing} planned results missing" if doc.missing else ""
        outcome, message = Outcome.DEVIATION, f"the kernel's own test failed: {how}{detail}{lost}"
    # The outcome and the subtests that failed: another tree's renamed or added passing subtests
    # are not a change of the kernel's behaviour (each subtest has its own result for that).
    fingerprint = json.dumps(
        {"outcome": outcome.value, "failed": sorted(failed)}, sort_keys=True, separators=(",", ":")
    )
    return [Judged(case, outcome, message, fingerprint, obs), *subs]


def _subtests(case: str, results: list[ktap.Result]) -> list[Judged]:
    out: list[Judged] = []
    seen: dict[str, int] = {}
    for r in results:
        name = r.name.replace("/", "∕")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        outcome = {
            "pass": Outcome.PASS,
            "xfail": Outcome.PASS,
            "skip": Outcome.NOT_APPLICABLE,
            "fail": Outcome.DEVIATION,
        }[r.outcome]
        message = {
            "pass": "ok",
            "xfail": f"expected failure: {r.reason}",
            "skip": f"skipped: {r.reason}",
            "fail": "not ok" + (f": {r.diagnostics[-1]}" if r.diagnostics else ""),
        }[r.outcome]
        fp = json.dumps({"outcome": r.outcome}, separators=(",", ":"))
        out.append(
            Judged(
                f"{case}/{name}",
                outcome,
                message,
                fp,
                {"number": r.number, "directive": r.directive or None, "diagnostics": r.diagnostics},
            )
        )
    return out


def _counts(subs: list[Judged]) -> str:
    if not subs:
        return "no KTAP results (a test that reports by exit status)"
    n = {o: sum(1 for j in subs if j.outcome is o) for o in (Outcome.PASS, Outcome.NOT_APPLICABLE)}
    return f"{n[Outcome.PASS]} ok, {n[Outcome.NOT_APPLICABLE]} skipped of {len(subs)}"


def _last(doc: ktap.Document) -> str:
    return doc.diagnostics[-1] if doc.diagnostics else "no output"


def _with_errors(doc: ktap.Document, errors: str) -> ktap.Document:
    """A program's stderr (perror() lines, say) counts among its diagnostics, after its stdout's."""
    extra = [line.strip()[:400] for line in errors.splitlines() if line.strip()]
    doc.diagnostics = (doc.diagnostics + extra)[-ktap.MAX_DIAGNOSTICS :]
    return doc
