"""The ledger: what tether changed for each deployment, kept in the stateroot's /var.

One JSON document per deployment, keyed by the ledger id stored in that
deployment's origin (serials are reused, ids are not), under
`/var/lib/tether/ledger/`. It records the kernel arguments tether added, the
steps that ran, and every /etc path a deploy-time step changed with its pre-
and post-image, so the next upgrade can undo exactly what a step did. File
contents of pre-images that were the admin's own edits are kept in a
content-addressed store beside it (`blobs/`), and whatever tether replaces that
the admin had changed is copied under `saved/`.

Documents are written to a temporary file, fsynced and renamed, and the
directory fsynced: a crash leaves the old document or the new one, never half
of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.etcstate import Image, Snapshot

TETHER_VAR = Path("lib/tether")  # relative to a stateroot's var
LEDGER_DIR = TETHER_VAR / "ledger"
BLOB_DIR = TETHER_VAR / "blobs"
SAVED_DIR = TETHER_VAR / "saved"
LOG_DIR = TETHER_VAR / "logs"


@dataclass(frozen=True)
class StepRecord:
    kind: str  # "hook", "ansible"
    name: str  # the bundle-relative script or playbook
    stage: str
    status: str  # "ok"
    summary: dict[str, int] = field(default_factory=dict)  # e.g. Ansible's recap
    changes: tuple[tuple[str, str], ...] = ()  # (/etc path, created|modified|removed)


@dataclass(frozen=True)
class PathRecord:
    """One /etc path a step changed: what it held before and after, relative to /etc."""

    path: str
    pre: Image | None
    post: Image | None
    pre_is_default: bool  # the pre-image was the OS default (or absent): reset to the new default
    step: str


@dataclass(frozen=True)
class Conflict:
    path: str  # relative to /etc
    saved: str | None  # where the admin's version was copied, relative to the stateroot's var
    reason: str


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    deployment: str  # the composed commit deployed
    bundle_commit: str
    os_commit: str
    kargs_added: tuple[str, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    paths: tuple[PathRecord, ...] = ()
    resets: tuple[str, ...] = ()  # paths of the previous ledger reset at this upgrade
    conflicts: tuple[Conflict, ...] = ()  # paths kept because the admin had changed them
    enforced: tuple[Conflict, ...] = ()  # enforced files whose local edit was replaced (and saved)
    accounts: tuple[str, ...] = ()  # accounts tether's steps made: disabled, never deleted, once undeclared
    boot_done: bool = False  # converge ran the boot-stage steps at the deployment's first boot

    def owned_paths(self, step: str) -> int:
        return sum(1 for p in self.paths if p.step == step)


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


def _to_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "deployment": entry.deployment,
        "bundle_commit": entry.bundle_commit,
        "os_commit": entry.os_commit,
        "kargs_added": list(entry.kargs_added),
        "steps": [
            {
                "kind": s.kind,
                "name": s.name,
                "stage": s.stage,
                "status": s.status,
                "summary": s.summary,
                "changes": [list(c) for c in s.changes],
            }
            for s in entry.steps
        ],
        "paths": [
            {
                "path": p.path,
                "pre": p.pre.to_json() if p.pre else None,
                "post": p.post.to_json() if p.post else None,
                "pre_is_default": p.pre_is_default,
                "step": p.step,
            }
            for p in entry.paths
        ],
        "resets": list(entry.resets),
        "conflicts": [{"path": c.path, "saved": c.saved, "reason": c.reason} for c in entry.conflicts],
        "enforced": [{"path": c.path, "saved": c.saved, "reason": c.reason} for c in entry.enforced],
        "accounts": list(entry.accounts),
        "boot_done": entry.boot_done,
    }


def _from_json(raw: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        id=raw["id"],
        deployment=raw["deployment"],
        bundle_commit=raw["bundle_commit"],
        os_commit=raw["os_commit"],
        kargs_added=tuple(raw.get("kargs_added", ())),
        steps=tuple(
            StepRecord(
                kind=s["kind"],
                name=s["name"],
                stage=s["stage"],
                status=s["status"],
                summary=dict(s.get("summary", {})),
                changes=tuple((c[0], c[1]) for c in s.get("changes", ())),
            )
            for s in raw.get("steps", ())
        ),
        paths=tuple(
            PathRecord(
                path=p["path"],
                pre=Image.from_json(p["pre"]),
                post=Image.from_json(p["post"]),
                pre_is_default=p["pre_is_default"],
                step=p["step"],
            )
            for p in raw.get("paths", ())
        ),
        resets=tuple(raw.get("resets", ())),
        conflicts=tuple(Conflict(**c) for c in raw.get("conflicts", ())),
        enforced=tuple(Conflict(**c) for c in raw.get("enforced", ())),
        accounts=tuple(raw.get("accounts", ())),
        boot_done=bool(raw.get("boot_done", False)),
    )


def write(var: Path, entry: LedgerEntry) -> None:
    data = json.dumps(_to_json(entry), indent=2, sort_keys=True).encode() + b"\n"
    write_atomically(ledger_dir(var) / f"{entry.id}.json", data)


def read(var: Path, ledger_id: str) -> LedgerEntry | None:
    path = ledger_dir(var) / f"{ledger_id}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return _from_json(raw)


def entries(var: Path) -> list[str]:
    directory = ledger_dir(var)
    if not directory.exists():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if not p.name.endswith(".etc.json"))


def write_etc_snapshot(var: Path, ledger_id: str, etc: Snapshot) -> None:
    """The /etc we merged from, as it was at upgrade time: converge compares it at first boot."""
    data = {path: image.to_json() for path, image in etc.items()}
    write_atomically(ledger_dir(var) / f"{ledger_id}.etc.json", json.dumps(data, sort_keys=True).encode())


def read_etc_snapshot(var: Path, ledger_id: str) -> Snapshot | None:
    try:
        raw = json.loads((ledger_dir(var) / f"{ledger_id}.etc.json").read_text())
    except FileNotFoundError:
        return None
    return {path: Image(**image) for path, image in raw.items()}


def remove(var: Path, ledger_id: str) -> None:
    (ledger_dir(var) / f"{ledger_id}.json").unlink(missing_ok=True)
    (ledger_dir(var) / f"{ledger_id}.etc.json").unlink(missing_ok=True)
    shutil.rmtree(var / LOG_DIR / ledger_id, ignore_errors=True)


# --- content kept beside the ledger ---------------------------------------------------------


def store_blob(var: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    path = var / BLOB_DIR / digest
    if not path.exists():
        write_atomically(path, content, 0o600)
    return digest


def read_blob(var: Path, digest: str) -> bytes | None:
    try:
        return (var / BLOB_DIR / digest).read_bytes()
    except FileNotFoundError:
        return None


def prune_blobs(var: Path, live: set[str]) -> list[str]:
    directory = var / BLOB_DIR
    removed = []
    if directory.exists():
        for blob in directory.iterdir():
            if blob.name not in live and not blob.name.startswith("."):
                blob.unlink()
                removed.append(blob.name)
    return removed


def save_copy(var: Path, ledger_id: str, source: Path, relative: str) -> str:
    """Keep a copy of an admin's version of /etc/relative; returns where, relative to var."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = var / SAVED_DIR / f"{stamp}-{ledger_id[:12]}" / "etc" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        target.symlink_to(os.readlink(source))
    elif source.is_dir():
        target.mkdir(exist_ok=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
    return str(target.relative_to(var))


def log_path(var: Path, ledger_id: str, index: int, name: str) -> Path:
    safe = name.replace("/", "_")
    return var / LOG_DIR / ledger_id / f"{index:02d}-{safe}.log"
