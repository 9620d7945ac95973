"""Saved guests (harness/snapshot.py): a guest saved at its ready marker and loaded by later boots.

The key is pure; the rest boots Debian 12's kernel in real QEMU, saves it with QEMU's own
migration, and loads it again, with the real probe over real SSH. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import log_text
from test_integration import Prepared, bookworm, boot_plan, qemu_pids  # noqa: F401

from harness.boot import accel, snapshot, vm
from harness.cache import cache_dir
from harness.errors import InfraError
from harness.kit import guest, image, probe
from harness.plan import matrix
from harness.report import resultsfile
from harness.results import BootResult, Outcome


def test_the_key_names_the_guest_not_the_place_it_runs_at(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd.cpio"
    kernel.write_bytes(b"kernel one")
    initrd.write_bytes(b"image")
    config = vm.VMConfig(kernel, initrd, 256, "tcg", 0)
    key = snapshot.key(config)
    assert snapshot.key(dataclasses.replace(config, port=40123)) == key
    serial = dataclasses.replace(config, transport="serial")
    assert snapshot.key(dataclasses.replace(serial, channel=tmp_path / "s.sock")) == snapshot.key(serial) != key
    assert snapshot.key(dataclasses.replace(config, ram_mb=512)) != key
    assert snapshot.key(dataclasses.replace(config, disk=initrd)) != key
    kernel.write_bytes(b"kernel two")  # the same path with other content: another guest
    assert snapshot.key(config) != key


def test_without_zstd_every_guest_boots_cold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(snapshot.shutil, "which", lambda name: None)
    assert snapshot.Store.of(tmp_path) is None
    monkeypatch.undo()
    assert snapshot.Store.of(tmp_path) == snapshot.Store(tmp_path / "guests")


def behaviour(result: BootResult) -> dict[tuple[str, str, str], tuple[str, str]]:
    return {(c.case, c.memlock, c.user): (c.outcome.value, c.fingerprint) for c in result.cases}


@pytest.mark.integration
def test_a_loaded_guest_behaves_as_the_booted_one(bookworm: Prepared, tmp_path: Path) -> None:  # noqa: F811
    """The whole catalogue, as root and as the user under 64K, in a guest booted cold (and saved)
    and then in one loaded from it: the same outcome and fingerprint for every case. The loaded
    boot says what it was loaded from, in its results and in its serial log; what each case cost
    is kept beside the saved guest."""
    store = snapshot.Store(tmp_path / "guests")
    runs = (
        matrix.RunPlan(None, "root", tuple(probe.build().names)),
        matrix.RunPlan(matrix.Memlock(64 << 10, 64 << 10), "user", tuple(probe.build().names)),
    )
    cold = boot_plan(bookworm, tmp_path / "cold", runs, saved=store)
    (saved,) = store.root.iterdir()
    assert cold.restored == "" and not cold.error
    assert sorted(p.name for p in saved.iterdir()) == [snapshot.CONSOLE, snapshot.COSTS, snapshot.ABOUT, snapshot.STATE]
    assert len(store.costs(saved.name)) > len(probe.build().names)  # what the cases cost, for guests side by side
    assert saved.stat().st_mode & 0o777 == 0o700  # it holds the guest's private host key
    about = json.loads((saved / snapshot.ABOUT).read_text())
    assert about["key"] == saved.name and about["format"] == snapshot.FORMAT
    assert "HARNESS-READY" in (saved / snapshot.CONSOLE).read_text()

    loaded = boot_plan(bookworm, tmp_path / "loaded", runs, saved=store)
    assert loaded.restored == saved.name and not loaded.error
    assert behaviour(loaded) == behaviour(cold)
    assert len(behaviour(cold)) == 2 * len(probe.build().names)
    assert resultsfile.read_results(tmp_path / "loaded").boots[0].restored == saved.name

    log = log_text(tmp_path / "loaded" / loaded.serial_log)
    head, _, after = log.partition(f"[harness: the boot above is the saved guest {saved.name}'s")
    assert "HARNESS-READY" in head and "Linux version" in head
    assert after and "Linux version" not in after  # the loaded guest did not boot again


@pytest.mark.integration
def test_a_state_that_does_not_load_is_deleted_and_the_guest_boots_cold(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A saved state QEMU cannot load costs one failed QEMU start: it is deleted, the guest boots
    cold, and the cold guest is saved in its place. No QEMU is left. Here the state is not zstd at
    all, which once left QEMU 7.2 waiting for ever: a stream that ends before its first byte."""
    kernel, img, _ = bookworm
    store = snapshot.Store(tmp_path / "guests")
    config = vm.VMConfig(
        kernel.vmlinux or kernel.image,
        img.path,
        256,
        accel.for_host().name,
        0,
        image.disk_image(cache_dir() / "images"),
    )
    key = snapshot.key(config)
    folder = store.root / key
    folder.mkdir(parents=True)
    (folder / snapshot.STATE).write_bytes(b"not a state")
    (folder / snapshot.CONSOLE).write_text("the boot that was saved\n")
    before = qemu_pids()
    log = tmp_path / "serial.log"
    with snapshot.boot(store, config, log, 240) as machine:
        assert machine.restored == "" and machine.alive
        assert machine.qmp_socket.parent.stat().st_mode & 0o777 == 0o700  # QMP: only this user
    assert qemu_pids() <= before
    text = log.read_text()
    assert "the saved guest did not load" in text and "HARNESS-READY" in text.split("did not load", 1)[1]
    assert (folder / snapshot.STATE).stat().st_size > 1 << 20  # saved again, by the cold boot
    assert [p.name for p in store.root.iterdir()] == [key]  # no work folder left behind


def test_a_guest_is_saved_only_while_no_connection_is_open() -> None:
    """A guest loaded from one saved holding a connection answers no session (its peer went with
    the saved QEMU): dropbear's console line for an accepted connection forbids the save."""
    snapshot._check_quiet(b"[107] Not backgrounding\nHARNESS-READY release=6.1.0-50-amd64\n")
    with pytest.raises(InfraError, match="already accepted a connection"):
        snapshot._check_quiet(b"HARNESS-READY release=7.1.0\n[116] Dec 06 Child connection from 127.0.0.1:44466\n")


@pytest.mark.integration
def test_a_guest_saved_over_the_serial_line_answers_every_time_it_is_loaded(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Over `serial` the guest's relay to dropbear connects only when a session wakes it, so the
    saved guest holds no connection, and every guest loaded from it answers (it once was saved
    just after the relay connected, and no loaded guest ever answered)."""
    store = snapshot.Store(tmp_path / "guests")
    runs = (matrix.RunPlan(None, "root", ("limits", "mlock_over", "map_locked_over")),)
    cold = boot_plan(bookworm, tmp_path / "cold", runs, transport="serial", saved=store)
    (saved,) = store.root.iterdir()
    assert cold.restored == "" and not cold.error
    assert snapshot.CONNECTION not in (saved / snapshot.CONSOLE).read_bytes()
    for n in (1, 2):
        loaded = boot_plan(bookworm, tmp_path / f"loaded{n}", runs, transport="serial", saved=store)
        assert (loaded.restored, loaded.error, loaded.retries) == (saved.name, "", 0)
        assert behaviour(loaded) == behaviour(cold)


@pytest.mark.integration
def test_a_saved_guest_that_never_answers_is_deleted_and_the_boot_goes_on_cold(
    bookworm: Prepared,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    """A state made so on purpose (dropbear killed, then saved): the boot that loads it cannot
    reach it, deletes it, boots cold and passes, and saves a good guest that the next boot loads.
    paramiko's tracebacks go to the boot's serial log, not the terminal."""
    kernel, img, key = bookworm
    store = snapshot.Store(tmp_path / "guests")
    config = vm.VMConfig(
        kernel.vmlinux or kernel.image,
        img.path,
        256,
        accel.for_host().name,
        0,
        image.disk_image(cache_dir() / "images"),
    )
    bad = snapshot.key(config)
    with vm.boot(config, tmp_path / "made.log", 240) as machine:
        with guest.Guest(machine.endpoint(img.host_key), "root", key) as session:
            session.connect()
            session.run(["sh", "-c", "kill $(cat /tmp/dropbear.pid)"], 30)
        store.save(machine, bad)
    runs = (matrix.RunPlan(None, "root", ("limits", "mlock_over")),)
    capfd.readouterr()

    first = boot_plan(bookworm, tmp_path / "first", runs, saved=store)
    assert (first.error, first.restored, first.retries) == ("", "", 0)
    assert {c.outcome for c in first.cases} == {Outcome.PASS}
    log = log_text(tmp_path / "first" / first.serial_log)
    assert f"[harness: the saved guest {bad} did not answer (cannot reach root@" in log
    assert "it is deleted, and the guest boots cold]" in log
    assert "[harness: ssh: ERROR" in log  # paramiko's own account of the failed handshakes
    err = capfd.readouterr().err
    assert "Traceback" not in err and "protocol banner" not in err

    second = boot_plan(bookworm, tmp_path / "second", runs, saved=store)
    assert (second.error, second.restored) == ("", bad)  # the cold boot saved a good one in its place
    assert {c.outcome for c in second.cases} == {Outcome.PASS}
