"""The ledger: what tether changed for each deployment, kept in the stateroot's /var.

One JSON document per deployment, keyed by the ledger id stored in that
deployment's origin (serials are reused, ids are not), under
`/var/lib/tether/ledger/`. It records the kernel arguments tether added (so the
next upgrade can remove exactly those) and the steps that ran. Documents are
written to a temporary file, fsynced and renamed, and the directory fsynced:
a crash leaves the old document or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

LEDGER_DIR = Path("lib/tether/ledger")  # relative to a stateroot's var


@dataclass(frozen=True)
class StepRecord:
    kind: str  # "hook"
    name: str  # the bundle-relative script
    stage: str
    status: str  # "ok"


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    deployment: str  # the composed commit deployed
    bundle_commit: str
    os_commit: str
    kargs_added: tuple[str, ...] = ()
    steps: tuple[StepRecord, ...] = field(default=())


def new_id() -> str:
    return uuid.uuid4().hex


def ledger_dir(var: Path) -> Path:
    return var / LEDGER_DIR


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write(var: Path, entry: LedgerEntry) -> None:
    data = json.dumps(asdict(entry), indent=2, sort_keys=True).encode() + b"\n"
    write_atomically(ledger_dir(var) / f"{entry.id}.json", data)


def read(var: Path, ledger_id: str) -> LedgerEntry | None:
    path = ledger_dir(var) / f"{ledger_id}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return LedgerEntry(
        id=raw["id"],
        deployment=raw["deployment"],
        bundle_commit=raw["bundle_commit"],
        os_commit=raw["os_commit"],
        kargs_added=tuple(raw.get("kargs_added", ())),
        steps=tuple(StepRecord(**s) for s in raw.get("steps", ())),
    )


def entries(var: Path) -> list[str]:
    directory = ledger_dir(var)
    return sorted(p.stem for p in directory.glob("*.json")) if directory.exists() else []


def remove(var: Path, ledger_id: str) -> None:
    (ledger_dir(var) / f"{ledger_id}.json").unlink(missing_ok=True)
