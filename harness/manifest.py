"""manifest.json as a typed record: what reproduces a run, and what merge, replay and history read back.

`run` writes one, `merge` combines the shards' into one, `replay` reads the matrix and kernels of
one, `history` reads the probe, QEMU and shards of one. Reading is tolerant of what older runs did
not record (a missing key is its empty value) and strict about types: a value of the wrong type
is bad input naming the file and the key. The JSON keeps the order and shape it always had
(docs/results-schema.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.debian.archive import Deb
from harness.jsondoc import Doc, load

FILE = "manifest.json"
MAX_BYTES = 64 << 20  # a 10-kernel run writes 50 kB; thousands of boots stay far below

T = TypeVar("T")


@dataclass(frozen=True)
class Accelerator:
    name: str = ""  # kvm or tcg: what the run started with
    reason: str = ""  # what was asked for, or what the KVM check saw
    fell_back: str = ""  # the boot KVM failed, and how, after which the run used tcg; "" when it did not


@dataclass(frozen=True)
class Probe:
    sha256: str = ""
    cases: tuple[str, ...] = ()  # the catalogue, in order


@dataclass(frozen=True)
class Image:
    sha256: str
    modules: tuple[str, ...]
    host_key: str


@dataclass(frozen=True)
class Booted:
    """The kernel a spec became: what identifies it, and its source kind's own record."""

    release: str
    package: str | None
    version: str | None
    sha256: str
    source: str  # "debian:bookworm", "path:/abs/file", "git:/repo@commit"
    pvh: bool
    debs: tuple[Deb, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. a git kernel's "build"


@dataclass(frozen=True)
class Kernel:
    """One kernel spec of the matrix: what it became, or why it could not."""

    spec: str  # the spec's label, as the matrix's boots name it
    error: str = ""
    booted: Booted | None = None
    image: Image | None = None


@dataclass(frozen=True)
class Shard:
    index: int
    count: int


@dataclass(frozen=True)
class PlanEntry:
    id: str
    kernel: str
    ram_mb: int


@dataclass(frozen=True)
class Boot:
    id: str
    kernel: str = ""
    ram_mb: int = 0
    runs: tuple[tuple[str, str], ...] = ()  # (memlock label, user)
    qemu_argv: tuple[str, ...] = ()
    qemu_command: str = ""  # qemu_argv shell-quoted, ready to paste
    transport: str = ""  # net or serial; "" in runs made before there was a choice
    transport_reason: str = ""  # why: asked for by the matrix, or what `auto` saw in the kernel
    userland: str = ""  # glibc or musl (harness.kit.userland); "" in runs made before there was a choice
    userland_reason: str = ""
    # the guest's NIC, disk and filesystem (harness.kernels.devices) when not virtio-net, virtio-blk and ext4
    devices: tuple[tuple[str, str], ...] = ()
    accelerator: str = ""  # what the boot's guests really ran under (kvm, or tcg once KVM failed); "" in older runs
    reused_from: str = ""  # the run whose results of the same inputs it took instead of booting (harness.reuse)


@dataclass(frozen=True)
class ReplayOf:
    run_id: str
    run_dir: str
    boots: tuple[str, ...]
    differences: tuple[str, ...]  # inputs that could not be the same


@dataclass(frozen=True)
class MergedShard:
    run_id: str
    shard: Shard | None
    host: Mapping[str, Any] | None


@dataclass(frozen=True)
class Manifest:
    harness_version: str = ""
    matrix_source: str = ""
    matrix_text: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)  # jobs, mirror, insecure
    accelerator: Accelerator = field(default_factory=Accelerator)
    qemu_version: str = ""
    probe: Probe = field(default_factory=Probe)
    expectations_sha256: str = ""
    kernels: tuple[Kernel, ...] = ()
    disk: Mapping[str, Any] | None = None  # path, sha256
    shard: Shard | None = None  # this run's slice of the plan, when it ran one
    plan: tuple[PlanEntry, ...] = ()  # every boot of the matrix, also those another shard ran
    boots: tuple[Boot, ...] = ()  # the boots this run ran
    host: Mapping[str, Any] = field(default_factory=dict)  # kernel, python
    replay_of: ReplayOf | None = None
    merged_from: tuple[MergedShard, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "harness_version": self.harness_version,
            "matrix_source": self.matrix_source,
            "matrix_text": self.matrix_text,
            "options": dict(self.options),
            "accelerator": {k: v for k, v in asdict(self.accelerator).items() if v or k != "fell_back"},
            "qemu_version": self.qemu_version,
            "probe": {"sha256": self.probe.sha256, "cases": list(self.probe.cases)},
            "expectations_sha256": self.expectations_sha256,
            "kernels": [_kernel_json(k) for k in self.kernels],
            "disk": None if self.disk is None else dict(self.disk),
            "shard": None if self.shard is None else asdict(self.shard),
            "plan": [asdict(p) for p in self.plan],
            "boots": [_boot_json(b) for b in self.boots],
            "host": dict(self.host),
        }
        if self.replay_of is not None:
            r = self.replay_of
            doc["replay_of"] = {
                "run_id": r.run_id,
                "run_dir": r.run_dir,
                "boots": list(r.boots),
                "differences": list(r.differences),
            }
        if self.merged_from:
            doc["merged_from"] = [
                {
                    "run_id": m.run_id,
                    "shard": None if m.shard is None else asdict(m.shard),
                    "host": None if m.host is None else dict(m.host),
                }
                for m in self.merged_from
            ]
        return doc

    @classmethod
    def from_json(cls, doc: object, where: str = FILE) -> Manifest:
        """The record of a manifest document; UserError naming `where` and the key when a value is not
        of its type."""
        top = Doc(doc, f"{where}: ", "a manifest.json the harness wrote")
        return cls(
            top.text("harness_version"),
            top.text("matrix_source"),
            top.text("matrix_text"),
            top.mapping("options"),
            top.each(
                "accelerator",
                lambda d: Accelerator(d.text("name"), d.text("reason"), d.text("fell_back")),
                Accelerator(),
            ),
            top.text("qemu_version"),
            top.each("probe", lambda d: Probe(d.text("sha256"), tuple(d.texts("cases"))), Probe()),
            top.text("expectations_sha256"),
            tuple(top.items("kernels", _kernel)),
            top.mapping("disk") if top.has("disk") else None,
            top.each("shard", _shard, None),
            tuple(top.items("plan", lambda d: PlanEntry(d.text("id"), d.text("kernel"), d.integer("ram_mb")))),
            tuple(top.items("boots", _boot)),
            top.mapping("host"),
            top.each(
                "replay_of",
                lambda d: ReplayOf(
                    d.text("run_id"), d.text("run_dir"), tuple(d.texts("boots")), tuple(d.texts("differences"))
                ),
                None,
            ),
            tuple(
                top.items(
                    "merged_from",
                    lambda d: MergedShard(
                        d.text("run_id"), d.each("shard", _shard, None), d.mapping("host") if d.has("host") else None
                    ),
                )
            ),
        )


def write_text(manifest: Manifest) -> str:
    return json.dumps(manifest.to_json(), indent=2, default=str) + "\n"


def read(run_dir: Path) -> Manifest | None:
    """A run directory's manifest; None when it has none (a run killed before writing it)."""
    file = run_dir / FILE
    if not file.exists():
        return None
    return Manifest.from_json(load(file, MAX_BYTES, "manifest.json"), str(file))


# --- the kernels' entries ----------------------------------------------------------------------

_BOOTED_KEYS = ("release", "package", "version", "sha256", "source", "pvh", "debs")


def _kernel_json(k: Kernel) -> dict[str, Any]:
    entry: dict[str, Any] = {"spec": k.spec, "error": k.error}
    if k.booted is not None:
        b = k.booted
        entry.update(
            release=b.release,
            package=b.package,
            version=b.version,
            sha256=b.sha256,
            source=b.source,
            pvh=b.pvh,
            debs=[_deb_json(d) for d in b.debs],
            **b.details,
        )
    if k.image is not None:
        entry["image"] = {"sha256": k.image.sha256, "modules": list(k.image.modules), "host_key": k.image.host_key}
    return entry


def _kernel(d: Doc) -> Kernel:
    booted = None
    if d.has("sha256") or d.has("release"):
        details = {k: v for k, v in d.doc.items() if k not in (*_BOOTED_KEYS, "spec", "error", "image")}
        booted = Booted(
            d.text("release"),
            d.opt_text("package"),
            d.opt_text("version"),
            d.text("sha256"),
            d.text("source"),
            d.flag("pvh"),
            tuple(d.items("debs", _deb)),
            details,
        )
    image = d.each("image", lambda i: Image(i.text("sha256"), tuple(i.texts("modules")), i.text("host_key")), None)
    return Kernel(d.text("spec"), d.text("error"), booted, image)


def _deb(d: Doc) -> Deb:
    # Every field: a replay downloads by them.
    digest = d.text("digest")
    return Deb(
        d.text("package", True),
        d.text("version", True),
        d.text("filename", True),
        d.text("sha256", not digest),
        d.integer("size", True),
        d.text("suite", True),
        digest,
        d.text("signature"),
    )


def _deb_json(deb: Deb) -> dict[str, Any]:
    """A .deb as the manifest lists it: what an old index lacks or adds only where it does."""
    return {k: v for k, v in asdict(deb).items() if v != "" or k not in ("digest", "signature")}


def _shard(d: Doc) -> Shard:
    return Shard(d.integer("index"), d.integer("count"))


def _boot_json(b: Boot) -> dict[str, Any]:
    doc = {
        "id": b.id,
        "kernel": b.kernel,
        "ram_mb": b.ram_mb,
        "runs": [{"memlock": m, "user": u} for m, u in b.runs],
        "qemu_argv": list(b.qemu_argv),
        "qemu_command": b.qemu_command,
    }
    if b.transport:
        doc.update(transport=b.transport, transport_reason=b.transport_reason)
    if b.userland and b.userland != "glibc":  # glibc goes unsaid: the manifests of earlier runs stay as they were
        doc.update(userland=b.userland, userland_reason=b.userland_reason)
    if b.devices:  # likewise virtio's devices
        doc["devices"] = dict(b.devices)
    if b.accelerator:
        doc["accelerator"] = b.accelerator
    if b.reused_from:
        doc["reused_from"] = b.reused_from
    return doc


def _boot(d: Doc) -> Boot:
    runs = tuple(d.items("runs", lambda r: (r.text("memlock"), r.text("user"))))
    return Boot(
        d.text("id"),
        d.text("kernel"),
        d.integer("ram_mb"),
        runs,
        tuple(d.texts("qemu_argv")),
        d.text("qemu_command"),
        d.text("transport"),
        d.text("transport_reason"),
        d.text("userland") or "glibc",
        d.text("userland_reason"),
        d.each("devices", _devices, ()),
        d.text("accelerator"),
        d.text("reused_from"),
    )


def _devices(d: Doc) -> tuple[tuple[str, str], ...]:
    return tuple((part, d.text(part)) for part in ("nic", "disk", "fs"))


def kernels_by_spec(kernels: Sequence[Kernel]) -> dict[str, Kernel]:
    """The first entry of each spec label (shards of one matrix list the same kernels)."""
    out: dict[str, Kernel] = {}
    for k in kernels:
        out.setdefault(k.spec, k)
    return out
