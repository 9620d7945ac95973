"""harness/kbuild.py and `git:` matrix kernels, without compiling (tests/test_bisect_kernel.py builds)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import git

from harness.debian import tools
from harness.errors import UserError
from harness.kernels import kbuild
from harness.kernels.sources.git import GitKernel
from harness.plan import matrix


@pytest.fixture
def repo(make_repo: Callable[[Sequence[tuple[str, dict[str, str]]]], Path]) -> Path:
    return make_repo([(f"commit {i}", {"Makefile": f"# {i}\n"}) for i in range(2)])


def test_git_kernel_in_a_matrix(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "frag.config").write_text("CONFIG_X=y\n")
    mx = matrix.parse(
        "kernels:\n  - git: {repo: linux, rev: HEAD~1, config: frag.config, base: defconfig}\n",
        str(tmp_path / "m.yaml"),
    )
    (k,) = mx.kernels
    assert k == GitKernel(repo, "HEAD~1", tmp_path / "frag.config", "defconfig")
    assert k.label == "linux@HEAD~1+frag" and k.origin.endswith("m.yaml:2: kernels.0")
    # The same commit with the default fragment is another kernel of the matrix, with another name.
    assert dataclasses.replace(k, config=None).label == "linux@HEAD~1"


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("{git: {repo: nowhere, rev: HEAD}}", "kernels.0.git.repo: "),
        ("{git: {repo: linux}}", "kernels.0.git.rev: give a revision"),
        ("{git: {repo: linux, rev: HEAD, base: allyesconfig}}", "kernels.0.git.base: 'allyesconfig': give one of"),
        ("{git: {repo: linux, rev: HEAD, config: missing}}", "kernels.0.git.config: "),
        ("{git: {repo: linux, rev: HEAD, branch: x}}", "kernels.0.git.branch: unknown key"),
        ("{git: linux}", "kernels.0.git: give {repo: DIR, rev: REV}"),
        ("{git: {repo: linux, rev: HEAD, compiler: 'rm -rf /'}}", "kernels.0.git.compiler: 'rm -rf /': give gcc or"),
        ("{git: {repo: linux, rev: HEAD, compiler: 9}}", "kernels.0.git.compiler: 9: give gcc or a Debian gcc-N"),
    ],
)
def test_bad_git_kernel_names_the_field(repo: Path, tmp_path: Path, item: str, says: str) -> None:
    with pytest.raises(UserError) as e:
        matrix.parse(f"kernels:\n  - {item}\n", str(tmp_path / "m.yaml"))
    assert str(e.value).startswith(f"{tmp_path / 'm.yaml'}:2: ") and says in str(e.value)


def test_an_older_compiler_is_the_tree_s_cc_and_hostcc_and_names_the_kernel(repo: Path, tmp_path: Path) -> None:
    mx = matrix.parse("kernels:\n  - git: {repo: linux, rev: HEAD, compiler: gcc-9}\n", str(tmp_path / "m.yaml"))
    (k,) = mx.kernels
    assert isinstance(k, GitKernel) and k.compiler == "gcc-9" and k.label == "linux@HEAD-gcc-9"
    assert kbuild.make_compiler("gcc-9", ccache=True) == ["CC=ccache gcc-9", "HOSTCC=gcc-9"]
    assert kbuild.make_compiler("gcc-9", ccache=False) == ["CC=gcc-9", "HOSTCC=gcc-9"]
    assert kbuild.make_compiler("gcc", ccache=False) == []  # the tree's own default, as before


def test_a_missing_compiler_is_installed_through_a_private_source_list(tmp_path: Path) -> None:
    """apt reads only the harness's list and keeps its lists and downloads under the cache; the
    host's sources are never read or written. (The install itself runs in `make test-bisect`.)"""
    argv = tools.apt_argv(tmp_path / "apt")
    options = dict(argv[i + 1].split("=", 1) for i in range(1, len(argv), 2) if argv[i] == "-o")
    assert options["Dir::Etc::SourceList"] == str(tmp_path / "apt" / "sources.list")
    assert options["Dir::Etc::SourceParts"] == "/dev/null"
    assert options["Dir::State::Lists"].startswith(str(tmp_path)) and options["Dir::Cache::Archives"].startswith(
        str(tmp_path)
    )
    assert tools.SUITE_OF["gcc-9"] == "bullseye"
    assert tools.ensure_compiler("gcc", lambda: "http://unused/debian", tmp_path, print) == shutil.which("gcc")


def test_resolve_gives_commit_tree_and_title_and_refuses_unknown_revisions(repo: Path) -> None:
    source = kbuild.resolve(GitKernel(repo, "HEAD~1"))
    assert source.commit == git(repo, "rev-parse", "HEAD~1") and source.title == "commit 0"
    assert source.tree == git(repo, "rev-parse", "HEAD~1^{tree}")
    with pytest.raises(UserError, match=r"no commit 'v9.9'; give a commit, tag or branch"):
        kbuild.resolve(GitKernel(repo, "v9.9"))


def test_the_cache_key_follows_tree_base_fragment_and_compiler(repo: Path) -> None:
    one, two = kbuild.resolve(GitKernel(repo, "HEAD~1")), kbuild.resolve(GitKernel(repo, "HEAD"))
    key = kbuild.build_key(one, "CONFIG_A=y\n", "gcc 12")
    assert key == kbuild.build_key(one, "CONFIG_A=y\n", "gcc 12")
    others = {
        kbuild.build_key(two, "CONFIG_A=y\n", "gcc 12"),
        kbuild.build_key(one, "CONFIG_A=n\n", "gcc 12"),
        kbuild.build_key(one, "CONFIG_A=y\n", "gcc 13"),
        kbuild.build_key(kbuild.resolve(GitKernel(repo, "HEAD~1", base="defconfig")), "CONFIG_A=y\n", "gcc 12"),
    }
    assert key not in others and len(others) == 4
    # A commit that changes nothing in the tree (a revert of a revert) builds nothing new.
    git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
    assert kbuild.build_key(kbuild.resolve(GitKernel(repo, "HEAD")), "", "g") == kbuild.build_key(two, "", "g")


def test_the_shipped_fragment_is_checked_against_the_final_config() -> None:
    wanted = kbuild.fragment_options(kbuild.FRAGMENT.read_text())
    assert wanted["CONFIG_PVH"] == "y" and wanted["CONFIG_VIRTIO_NET"] == "y" and wanted["CONFIG_EXT4_FS"] == "y"
    final = "CONFIG_PVH=y\n# CONFIG_VIRTIO_NET is not set\nCONFIG_EXT4_FS=m\n"
    missing = kbuild.missing_options(wanted, final)
    assert "CONFIG_VIRTIO_NET" in missing and "CONFIG_EXT4_FS" in missing and "CONFIG_PVH" not in missing
    assert kbuild.fragment_options("# CONFIG_SWAP is not set\nCONFIG_HZ=250\n") == {
        "CONFIG_SWAP": "n",
        "CONFIG_HZ": "250",
    }


def test_an_interrupted_build_step_stops_its_children_with_sigint_first(tmp_path: Path) -> None:
    """make deletes a half-written target on SIGINT; SIGKILL alone would leave it to pass as built."""
    target = tmp_path / "half.o"
    child_pid = tmp_path / "pid"
    argv = [
        "sh",
        "-c",
        f"trap 'rm -f {target}; exit 130' INT; echo $$ > {child_pid}; echo partial > {target}; sleep 30 & wait",
    ]

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            kbuild._run(argv, tmp_path / "build.log", dict(os.environ), "make")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not target.exists()
    pid = int(child_pid.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failed_build_step_names_its_log_and_last_lines(tmp_path: Path) -> None:
    with pytest.raises(kbuild.BuildFailure) as e:
        kbuild._run(
            ["sh", "-c", "echo compiling; echo 'mm/mlock.c:42: error: boom' >&2; exit 2"],
            tmp_path / "build.log",
            dict(os.environ),
            "make bzImage",
        )
    assert str(e.value).startswith(f"make bzImage failed (exit 2); last lines of {tmp_path / 'build.log'}:")
    assert str(e.value).endswith("mm/mlock.c:42: error: boom")


def test_a_failed_build_keeps_the_log_it_names(repo: Path, tmp_path: Path) -> None:
    """A tree whose Makefile is not a kernel's: the real build path fails at `make tinyconfig`, and the
    log the error names is still there afterwards (the build's staging directory is not)."""
    (repo / "Makefile").write_text("tinyconfig:\n\t@echo 'no kernel here' >&2; exit 2\n")
    git(repo, "commit", "-qam", "not a kernel")
    source = kbuild.resolve(GitKernel(repo, "HEAD"))
    with pytest.raises(kbuild.BuildFailure) as e:
        kbuild.build(source, tmp_path / "cache", lambda m: None)
    named = Path(str(e.value).split("last lines of ", 1)[1].split(":\n", 1)[0])
    assert named.parent == tmp_path / "cache" / "builds" and named.is_file()
    kept = named.read_text()
    assert "$ make -C" in kept and str(e.value).endswith(kept.splitlines()[-1])
    assert [p.name for p in named.parent.iterdir() if p.name.startswith(".") and p.is_dir()] == []


def test_a_git_kernel_s_repo_may_be_home_relative(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "matrices").mkdir()
    (tmp_path / "matrices" / "m.yaml").write_text("kernels:\n  - git: {repo: ~/linux, rev: HEAD}\n")
    (k,) = matrix.load(tmp_path / "matrices" / "m.yaml").kernels
    assert k == GitKernel(repo, "HEAD")
