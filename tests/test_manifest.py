"""harness/manifest.py: manifest.json as a typed record, read back exactly and refused when malformed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import manifest
from harness.errors import UserError
from harness.manifest import Manifest

# A real default run's manifest.json, written by the harness before the record was typed.
REAL = Path(__file__).resolve().parent / "data" / "manifest-default-run.json"
DEB = {
    "package": "linux-image-6.1.0-50-amd64",
    "version": "6.1.176-1",
    "filename": "pool/x.deb",
    "sha256": "ab" * 32,
    "size": 1,
    "suite": "bookworm",
}


def test_a_real_manifest_reads_into_records_and_writes_back_byte_for_byte() -> None:
    text = REAL.read_text()
    record = Manifest.from_json(json.loads(text))
    assert manifest.write_text(record) == text
    assert [k.spec for k in record.kernels] == ["bullseye", "bookworm", "trixie", "sid+trixie-backports"]
    k = record.kernels[1].booted
    assert k is not None and k.debs and k.debs[0].package.startswith("linux-image-6.1")
    assert record.probe.sha256 and record.accelerator.name in ("kvm", "tcg") and record.shard is None
    assert [b.id for b in record.boots] == [p.id for p in record.plan]
    assert record.boots[0].runs[0] == ("default", "root") and record.boots[0].qemu_command.startswith("qemu-system")


def test_what_an_older_run_did_not_record_reads_as_empty(tmp_path: Path) -> None:
    record = Manifest.from_json({"matrix_text": "kernels: [{debian: bookworm}]\n", "kernels": [{"spec": "bookworm"}]})
    assert record.kernels[0].booted is None and record.plan == () and record.probe.sha256 == ""
    assert manifest.read(tmp_path) is None  # no manifest.json at all


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "manifest.json: top level: not an object"),
        ({"matrix_text": 5}, "manifest.json: matrix_text: not a string"),
        ({"kernels": {"spec": "x"}}, "manifest.json: kernels: not a list"),
        (
            {"kernels": [{"spec": "x", "sha256": "ab", "debs": [{"bogus": 1}]}]},
            "manifest.json: kernels[0].debs[0].package: missing",
        ),
        (
            {"kernels": [{"spec": "x", "sha256": "ab", "debs": [{**DEB, "size": "big"}]}]},
            "manifest.json: kernels[0].debs[0].size: not an integer",
        ),
        ({"shard": {"index": True, "count": 2}}, "manifest.json: shard.index: not an integer"),
        (
            {"boots": [{"id": "b", "qemu_argv": ["qemu", 1]}]},
            "manifest.json: boots[0].qemu_argv: not a list of strings",
        ),
        ({"merged_from": [{"run_id": "r", "host": "x"}]}, "manifest.json: merged_from[0].host: not an object"),
    ],
)
def test_a_value_of_the_wrong_type_is_bad_input_naming_the_key(doc: object, says: str) -> None:
    with pytest.raises(UserError) as e:
        Manifest.from_json(doc)
    assert str(e.value).startswith(says)


def test_read_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"plan": [{"id": 1}]}')
    with pytest.raises(UserError, match=rf"^{tmp_path}/manifest.json: plan\[0\].id: not a string"):
        manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="cannot read it as JSON"):
        manifest.read(tmp_path)
