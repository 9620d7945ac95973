"""harness/matrix.py: parsing, validation messages (file:line: key: ...) and expansion into boots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.kernels.sources.debian import DebianKernel
from harness.kernels.sources.path import PathKernel
from harness.kit.suites.kselftest import MM
from harness.plan import matrix
from harness.plan.matrix import Memlock, Timeouts

KERNEL = "kernels:\n  - debian: bookworm\n"


def parse_error(text: str, source: str = "m.yaml") -> str:
    with pytest.raises(UserError) as info:
        matrix.parse(text, source)
    return str(info.value)


# --- the embedded default ---------------------------------------------------------------------


def test_default_matrix_parses() -> None:
    mx = matrix.load_default()
    assert mx.kernels == (
        DebianKernel(("bullseye",)),
        DebianKernel(("bookworm",)),
        DebianKernel(("trixie",)),
        DebianKernel(("sid", "trixie-backports")),
    )
    assert mx.ram_mb == (256,)
    assert mx.memlocks == (None, Memlock(65536, 65536), Memlock(0, 0), Memlock(None, None))
    assert [m.label if m else "default" for m in mx.memlocks] == ["default", "64K", "0", "unlimited"]
    assert mx.users == ("root", "user")
    assert mx.cases is None  # all
    assert mx.timeouts == Timeouts(boot=180.0, case=60.0)
    assert "default matrix" in mx.source


def test_default_matrix_expands_to_four_boots_of_eight_runs(catalogue: list[str]) -> None:
    boots = matrix.expand(matrix.load_default(), catalogue)
    assert len(boots) == 4
    assert [b.id for b in boots] == ["bullseye-256M", "bookworm-256M", "trixie-256M", "sid+trixie-backports-256M"]
    for boot in boots:
        assert boot.ram_mb == 256
        assert len(boot.runs) == 8
        assert {(r.memlock_label, r.user) for r in boot.runs} == {
            (m, u) for m in ("default", "64K", "0", "unlimited") for u in ("root", "user")
        }
        assert all(r.cases == tuple(catalogue) for r in boot.runs)


def test_default_text_is_what_load_default_parses() -> None:
    assert matrix.parse(matrix.default_text(), "x.yaml").kernels == matrix.load_default().kernels


# --- expansion --------------------------------------------------------------------------------


def test_expand_with_explicit_cases_keeps_their_order(catalogue: list[str]) -> None:
    chosen = [catalogue[3], catalogue[0]]
    mx = matrix.parse(KERNEL + f"cases: [{chosen[0]}, {chosen[1]}]\nram: [128M, 256M]\n", "m.yaml")
    boots = matrix.expand(mx, catalogue)
    assert [b.ram_mb for b in boots] == [128, 256]
    assert [b.id for b in boots] == ["bookworm-128M", "bookworm-256M"]
    assert all(r.cases == tuple(chosen) for b in boots for r in b.runs)


def test_expand_unknown_case_names_it(catalogue: list[str]) -> None:
    mx = matrix.parse(KERNEL + f"cases: [{catalogue[0]}, no_such_case]\n", "m.yaml")
    with pytest.raises(UserError, match=r"m\.yaml: cases: unknown case 'no_such_case'") as info:
        matrix.expand(mx, catalogue)
    assert len(str(info.value).splitlines()) == 1


def test_suites_run_beside_the_probe_and_their_programs_are_cases(catalogue: list[str]) -> None:
    both = matrix.expand(matrix.parse(KERNEL + "suites: [probe, kselftest-mm]\n", "m.yaml"), catalogue)
    cases = both[0].runs[0].cases
    assert cases[: len(catalogue)] == tuple(catalogue)
    assert cases[len(catalogue) :] == tuple(f"kselftest-mm:{p}" for p in MM.programs)
    alone = matrix.expand(matrix.parse(KERNEL + "suites: [kselftest-mm]\n", "m.yaml"), catalogue)
    assert alone[0].runs[0].cases == cases[len(catalogue) :]
    # Naming a suite's program among the cases (as `bisect --case` does) is enough to run it.
    one = matrix.expand(matrix.parse(KERNEL + "cases: [kselftest-mm:on-fault-limit]\n", "m.yaml"), catalogue)
    assert one[0].runs[0].cases == ("kselftest-mm:on-fault-limit",)
    assert matrix.parse(KERNEL, "m.yaml").suites == ("probe",)
    with pytest.raises(UserError, match=r"m\.yaml: cases: unknown case 'kselftest-mm:nope'"):
        matrix.expand(matrix.parse(KERNEL + "cases: [kselftest-mm:nope]\n", "m.yaml"), catalogue)
    for bad, says in (
        ("[probe, ltp]", "suites.1: 'ltp': give one of probe, kselftest-mm"),
        ("[probe, probe]", "suites: list each suite once"),
        ("[]", "suites: is empty"),
    ):
        with pytest.raises(UserError, match=re.escape(says)):
            matrix.parse(KERNEL + f"suites: {bad}\n", "m.yaml")


def test_the_same_kernel_twice_is_refused() -> None:
    """It used to boot twice, unasked (issue 11); the same kernel written two ways is the same kernel."""
    for text in (
        "kernels:\n  - debian: bookworm\n  - debian: trixie\n  - debian: bookworm\n",
        "kernels:\n  - debian: bookworm\n  - debian: trixie\n  - {debian: {suite: bookworm, "
        "package: linux-image-amd64}}\n",
    ):
        with pytest.raises(UserError, match=r"^m.yaml:4: kernels.2: the same kernel as kernels.0; remove one$"):
            matrix.parse(text, "m.yaml")


def test_path_kernels_with_the_same_name_get_unique_boot_ids(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "bzImage").write_bytes(b"x")
    text = f"kernels:\n  - path: {tmp_path}/a/bzImage\n  - path: {tmp_path}/b/bzImage\n"
    ids = [b.id for b in matrix.expand(matrix.parse(text, "m.yaml"), ["limits"])]
    assert ids == ["bzImage-256M", "bzImage-256M.2"]


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64K", 65536),
        ("8M", 8 << 20),
        ("1G", 1 << 30),
        ("0", 0),
        (0, 0),
        (12345, 12345),
        ("64k", 65536),
        ("64KiB", 65536),
        (" 2 M ", 2 << 20),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert matrix.parse_size(value) == expected


@pytest.mark.parametrize("value", ["12Q", "-1", -1, "1.5M", "", True, None, [64]])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        matrix.parse_size(value)


def test_negative_size_says_so() -> None:
    with pytest.raises(ValueError, match="negative"):
        matrix.parse_size(-4096)


@pytest.mark.parametrize(
    ("n", "text"), [(None, "unlimited"), (0, "0"), (65536, "64K"), (8 << 20, "8M"), (1 << 30, "1G"), (1000, "1000")]
)
def test_format_size(n: int | None, text: str) -> None:
    assert matrix.format_size(n) == text


def test_memlock_sizes_in_matrix() -> None:
    mx = matrix.parse(KERNEL + "memlock: [64K, 8M, 1G, 0, 4096, unlimited, {soft: 64K, hard: 1M}]\n", "m.yaml")
    assert mx.memlocks == (
        Memlock(65536, 65536),
        Memlock(8 << 20, 8 << 20),
        Memlock(1 << 30, 1 << 30),
        Memlock(0, 0),
        Memlock(4096, 4096),
        Memlock(None, None),
        Memlock(65536, 1 << 20),
    )
    assert mx.memlocks[-1] is not None and mx.memlocks[-1].label == "64K:1M"


def test_memlock_pair_soft_below_unlimited_hard_accepted() -> None:
    mx = matrix.parse(KERNEL + "memlock:\n  - {soft: 64K, hard: unlimited}\n", "m.yaml")
    assert mx.memlocks == (Memlock(65536, None),)


@pytest.mark.parametrize("pair", ["{soft: 1M, hard: 64K}", "{soft: unlimited, hard: 64K}"])
def test_memlock_pair_soft_above_hard_rejected(pair: str) -> None:
    msg = parse_error(KERNEL + f"memlock:\n  - default\n  - {pair}\n")
    assert msg == "m.yaml:5: memlock.1: soft limit is above the hard limit; make soft <= hard"


@pytest.mark.parametrize(("value", "why"), [("12Q", "'12Q' is not a size"), ("-5", "negative")])
def test_bad_memlock_size_names_line_and_key(value: str, why: str) -> None:
    msg = parse_error(KERNEL + f"memlock:\n  - 64K\n  - {value}\n")
    assert msg.startswith("m.yaml:5: memlock.1: ")
    assert why in msg
    assert len(msg.splitlines()) == 1


# --- path kernels -----------------------------------------------------------------------------


def test_path_kernel_accepted(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-test"
    kernel.write_bytes(b"not really a kernel")
    mods = tmp_path / "modules"
    mods.mkdir()
    mx = matrix.parse(f"kernels:\n  - path: {kernel}\n  - path: {kernel}\n    modules: {mods}\n", "m.yaml")
    assert mx.kernels == (PathKernel(kernel), PathKernel(kernel, mods))
    assert mx.kernels[0].label == "vmlinuz-test"


def test_relative_path_kernel_is_relative_to_the_matrix_file(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"x")
    (tmp_path / "m.yaml").write_text("kernels:\n  - path: bzImage\n")
    assert matrix.load(tmp_path / "m.yaml").kernels == (PathKernel(tmp_path / "bzImage"),)


def test_a_home_relative_path_is_the_user_s_wherever_the_matrix_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`~/...` in path: and git: {repo: ...} (docs/matrix.md writes `repo: ~/src/linux`) is expanded first,
    not joined under the matrix's directory as a directory named "~"."""
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    (home / "src" / "bzImage").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "m.yaml").write_text("kernels:\n  - path: ~/src/bzImage\n")
    assert matrix.load(tmp_path / "elsewhere" / "m.yaml").kernels == (PathKernel(home / "src" / "bzImage"),)


def test_missing_path_kernel_rejected_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "bzImage"
    msg = parse_error(f"ram: [256M]\nkernels:\n  - debian: bookworm\n  - path: {missing}\n")
    assert msg.startswith("m.yaml:4: kernels.1.path: ")
    assert str(missing) in msg
    assert len(msg.splitlines()) == 1


def test_path_kernel_modules_must_be_a_directory(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"x")
    msg = parse_error(f"kernels:\n  - path: {kernel}\n    modules: {tmp_path / 'nope'}\n")
    assert msg.startswith("m.yaml:3: kernels.0.modules: ")
    assert str(tmp_path / "nope") in msg


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "absent.yaml"))):
        matrix.load(tmp_path / "absent.yaml")


# --- duplicates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("axis", "line"),
    [
        ("ram: [256M, 256M]", 3),
        ("memlock: [64K, 65536]", 3),
        ("memlock: [default, default]", 3),
        ("users: [root, user, root]", 3),
    ],
)
def test_duplicate_axis_values_rejected(axis: str, line: int) -> None:
    name = axis.split(":")[0]
    expected = f"m.yaml:{line}: {name}: lists the same value twice; remove the duplicate"
    assert parse_error(KERNEL + axis + "\n") == expected


def test_duplicate_case_names_rejected() -> None:
    parse_error(KERNEL + "cases: [limits, limits]\n")


# --- malformed input: one line, file:line, key path -------------------------------------------


MALFORMED = {
    "yaml syntax": (KERNEL + "ram: 256M: 512M\n", "m.yaml:3: invalid YAML: "),
    "yaml tab": ("kernels:\n\t- debian: bookworm\n", "m.yaml:2: invalid YAML: "),
    "unknown top-level key": (KERNEL + "ram: [256M]\nkernel_args: quiet\n", "m.yaml:4: kernel_args: unknown key"),
    "unknown debian key": (
        "kernels:\n  - debian: trixie\n  - debian:\n      suite: bookworm\n      flavour: rt\n",
        "m.yaml:5: kernels.1.debian.flavour: unknown key",
    ),
    "bad suite": ("kernels:\n  - debian: {suite: Bookworm!}\n", "m.yaml:2: kernels.0.debian.suite: "),
    "kernel shape": ("kernels:\n  - debian: bookworm\n  - ubuntu: noble\n", "m.yaml:3: kernels.1: "),
    "missing kernels": ("ram: [256M]\n", "m.yaml:1: (top level): missing 'kernels'"),
    "empty ram": (KERNEL + "ram: []\n", "m.yaml:3: ram: is empty"),
    "empty users": (KERNEL + "users: []\n", "m.yaml:3: users: is empty"),
    "empty memlock": (KERNEL + "memlock: []\n", "m.yaml:3: memlock: is empty"),
    "ram below 96M": (KERNEL + "ram:\n  - 256M\n  - 64M\n", "m.yaml:5: ram.1: 64M is too small"),
    "ram 95M": (KERNEL + "ram: [95M]\n", "m.yaml:3: ram.0: 95M is too small"),
    "ram in bytes": (KERNEL + "ram: [268435456]\n", "m.yaml:3: ram.0: give guest RAM in whole megabytes"),
    "ram not a size": (KERNEL + "ram: [lots]\n", "m.yaml:3: ram.0: 'lots' is not a size"),
    "unknown user": (KERNEL + "users:\n  - root\n  - alice\n", "m.yaml:5: users.1: 'alice' is not a guest user"),
    "non-mapping top level": ("- debian: bookworm\n", "m.yaml:1: (top level): a matrix file is a mapping"),
    "scalar top level": ("bookworm\n", "m.yaml:1: (top level): a matrix file is a mapping"),
    "empty file": ("", "m.yaml:1: (top level): a matrix file is a mapping"),
    "timeouts not a mapping": (KERNEL + "timeouts: 60\n", "m.yaml:3: timeouts: expected a mapping"),
    "timeouts negative": (KERNEL + "timeouts:\n  case: 30\n  boot: -1\n", "m.yaml:5: timeouts.boot: give a positive"),
    "timeouts zero": (KERNEL + "timeouts:\n  case: 0\n", "m.yaml:4: timeouts.case: give a positive"),
    "timeouts string": (KERNEL + "timeouts:\n  boot: slow\n", "m.yaml:4: timeouts.boot: give a positive"),
    "timeouts bool": (KERNEL + "timeouts:\n  boot: true\n", "m.yaml:4: timeouts.boot: give a positive"),
    "timeouts unknown key": (KERNEL + "timeouts:\n  boot: 5\n  login: 3\n", "m.yaml:5: timeouts.login: unknown key"),
    "memlock pair key": (KERNEL + "memlock:\n  - {soft: 64K, max: 1M}\n", "m.yaml:4: memlock.0.max: unknown key"),
    "memlock pair no soft": (KERNEL + "memlock:\n  - {hard: 1M}\n", "m.yaml:4: memlock.0: a limit pair needs 'soft'"),
    "cases not names": (KERNEL + "cases: 5\n", "m.yaml:3: cases: give 'all' or a list"),
}


@pytest.mark.parametrize(("text", "prefix"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_matrix_is_one_line_with_file_line_and_key(text: str, prefix: str) -> None:
    msg = parse_error(text)
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(prefix), msg


def test_error_names_the_source_given(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(KERNEL + "users: [nobody]\n")
    with pytest.raises(UserError) as info:
        matrix.load(path)
    assert str(info.value).startswith(f"{path}:3: users.0: 'nobody' is not a guest user")


@pytest.mark.parametrize("key", ["123", "yes"])
def test_unknown_non_string_key_names_its_line(key: str) -> None:
    msg = parse_error(KERNEL + "ram: [256M]\n" + f"{key}: 1\n")
    assert msg.startswith("m.yaml:4: "), msg
    assert "unknown key" in msg


def test_debian_version_line() -> None:
    m = matrix.parse('kernels:\n  - debian: {suite: [trixie-backports, sid], version: "7.2"}\n', "m.yaml")
    (k,) = m.kernels
    assert isinstance(k, DebianKernel) and k.version == "7.2" and k.label == "trixie-backports+sid-7.2"
    with pytest.raises(UserError, match=r"^m\.yaml:2: kernels\.0\.debian\.version: quote it"):
        matrix.parse("kernels:\n  - debian: {suite: trixie, version: 6.10}\n", "m.yaml")
    with pytest.raises(UserError, match="either abi or version"):
        matrix.parse('kernels:\n  - debian: {suite: trixie, version: "6.12", abi: 6.12.1-amd64}\n', "m.yaml")
    with pytest.raises(UserError, match="upstream line"):
        matrix.parse('kernels:\n  - debian: {suite: trixie, version: "6"}\n', "m.yaml")


def test_shipped_matrices_parse() -> None:
    shipped = sorted((Path(__file__).resolve().parent.parent / "guest-tests" / "matrices").glob("*.yaml"))
    assert shipped
    for path in shipped:
        m = matrix.load(path)
        assert m.kernels and m.cases is None


def test_debian_builds_and_version_ranges() -> None:
    text = (
        "kernels:\n  - debian: {suite: trixie-backports, builds: all}\n"
        '  - debian: {suite: [bookworm, bookworm-security], version: ">=6.1,<6.2", builds: lines}\n'
    )
    every, lines = matrix.parse(text, "m.yaml").kernels
    assert (every.builds, every.label) == ("all", "trixie-backports-all")
    assert (lines.version, lines.builds) == (">=6.1,<6.2", "lines")
    assert lines.label == "bookworm+bookworm-security->=6.1,<6.2-lines"
    for bad, says in [
        ("{suite: sid, builds: some}", "kernels.0.debian.builds: 'some': give one of newest, lines, all"),
        ("{suite: sid, builds: all, abi: 7.2.13+deb14-amd64}", "kernels.0.debian.builds: an abi is one"),
        ('{suite: sid, version: "about 7"}', "kernels.0.debian.version: 'about 7': give an upstream line"),
    ]:
        assert parse_error(f"kernels:\n  - debian: {bad}\n").startswith(f"m.yaml:2: {says}")
