"""status, rollback and cleanup: reading and reordering what is deployed.

`status` joins three sources per deployment: libostree's view (checksum,
serial, pins, kernel arguments), the composed commit's metadata (which OS and
bundle it was made of) and the ledger (which steps ran). `rollback` and
`cleanup` change the deployment list or remove what nothing references, always
under the sysroot lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether import ledger
from tether.compose import (
    COMPOSE_REF_PREFIX,
    KEY_BINDING,
    KEY_BUNDLE_COMMIT,
    KEY_BUNDLE_NAME,
    KEY_BUNDLE_REF,
    KEY_BUNDLE_VERSION,
    KEY_OS_COMMIT,
)
from tether.edge.ostree import Deployment, OstreeError, Repo, Sysroot
from tether.errors import UsageError
from tether.sysroot import SysrootSession, remove_unreferenced_deployments


def _rollback_target(deployments: list[Deployment], stateroot: str) -> Deployment | None:
    """The deployment `rollback` would make the default, as rpm-ostree chooses it."""
    ours = [d for d in deployments if d.stateroot == stateroot]
    if len(ours) < 2:
        return None
    booted = next((d for d in ours if d.booted), None)
    if booted is not None and booted.index != ours[0].index:
        return booted
    return ours[1]


def _metadata(repo: Repo, checksum: str) -> dict[str, Any]:
    try:
        return repo.commit(checksum).metadata
    except OstreeError:
        return {}


def describe(sysroot: Sysroot, deployment: Deployment, rollback: Deployment | None) -> dict[str, Any]:
    repo = sysroot.repo
    metadata = _metadata(repo, deployment.checksum)
    bundle: dict[str, Any] | None = None
    if KEY_BUNDLE_COMMIT in metadata:
        bundle_commit = str(metadata[KEY_BUNDLE_COMMIT])
        binding = [str(c) for c in metadata.get(KEY_BINDING, [])]
        bundle = {
            "name": metadata.get(KEY_BUNDLE_NAME),
            "version": metadata.get(KEY_BUNDLE_VERSION),
            "commit": bundle_commit,
            "ref": metadata.get(KEY_BUNDLE_REF) or deployment.origin_value("tether", "bundle-ref"),
            "remote": deployment.origin_value("tether", "remote"),
            "bound_to": binding,
        }
    steps: list[dict[str, Any]] = []
    ledger_id = deployment.origin_value("tether", "ledger-id")
    if ledger_id:
        entry = ledger.read(sysroot.stateroot_var(deployment.stateroot), ledger_id)
        if entry is not None:
            steps = [
                {
                    "kind": s.kind,
                    "name": s.name,
                    "stage": s.stage,
                    "status": s.status,
                    "summary": s.summary,
                    "paths": entry.owned_paths(s.name),
                }
                for s in entry.steps
            ]
    return {
        "stateroot": deployment.stateroot,
        "checksum": deployment.checksum,
        "serial": deployment.serial,
        "version": metadata.get("version"),
        "os_commit": metadata.get(KEY_OS_COMMIT, deployment.checksum),
        "bundle": bundle,
        "default": deployment.index == 0,
        "booted": deployment.booted,
        "rollback": rollback is not None
        and rollback.name == deployment.name
        and rollback.stateroot == deployment.stateroot,
        "pinned": deployment.pinned,
        "staged": deployment.staged,
        "kernel_arguments": list(deployment.kernel_arguments),
        "steps": steps,
        "origin_refspec": deployment.origin_value("origin", "refspec"),
        "health": _health(sysroot, deployment),
    }


def _health(sysroot: Sysroot, deployment: Deployment) -> dict[str, Any] | None:
    """What the boot health verdict recorded for this deployment, if it ever booted."""
    from tether.health import read_record

    key = deployment.origin_value("tether", "ledger-id") or deployment.name
    entry = read_record(sysroot.stateroot_var(deployment.stateroot))["deployments"].get(key)
    if entry is None:
        return None
    return {
        "status": entry.get("status"),
        "good_boots": entry.get("good_boots", 0),
        "failed_boots": entry.get("failed_boots", 0),
        "failed_units": entry.get("failed_units", []),
    }


def status(sysroot_path: Path) -> list[dict[str, Any]]:
    sysroot = Sysroot(sysroot_path)
    sysroot.load()
    deployments = sysroot.deployments()
    rollbacks = {s: _rollback_target(deployments, s) for s in {d.stateroot for d in deployments}}
    return [describe(sysroot, d, rollbacks[d.stateroot]) for d in deployments]


@dataclass(frozen=True)
class RollbackResult:
    default: Deployment
    previous: Deployment
    default_version: str
    previous_version: str


def rollback(
    sysroot_path: Path,
    stateroot: str | None,
    lock_timeout: float,
    report: Callable[[str], None] | None = None,
) -> RollbackResult:
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot)
        deployments = sysroot.deployments()
        target = _rollback_target(deployments, stateroot)
        if target is None:
            raise UsageError(f"stateroot {stateroot} has no rollback deployment")
        previous = deployments[0]
        rest = [d for d in deployments if d.name != target.name or d.stateroot != target.stateroot]
        sysroot.write_deployments([target, *rest])
        new_default = sysroot.deployments()[0]
        repo = sysroot.repo
        versions = [
            str(_metadata(repo, d.checksum).get("version") or d.checksum[:12])
            for d in (new_default, previous)
        ]
    return RollbackResult(new_default, previous, *versions)


@dataclass(frozen=True)
class CleanupResult:
    deployment_dirs: list[str]
    compose_refs: list[str]
    ledger_entries: list[str]


def cleanup(
    sysroot_path: Path,
    stateroot: str | None,
    lock_timeout: float,
    report: Callable[[str], None] | None = None,
) -> CleanupResult:
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        deployments = sysroot.deployments()
        dirs: list[str] = []
        for name in sysroot.stateroots():
            dirs += remove_unreferenced_deployments(sysroot, name)
        repo = sysroot.repo
        deployed = {d.checksum for d in deployments}
        refs = [r for r, c in repo.refs(COMPOSE_REF_PREFIX).items() if c not in deployed]
        for ref in refs:
            repo.set_ref(ref, None)
        entries: list[str] = []
        for name in sysroot.stateroots():
            var = sysroot.stateroot_var(name)
            live = {d.origin_value("tether", "ledger-id") for d in deployments if d.stateroot == name}
            for ledger_id in ledger.entries(var):
                if ledger_id not in live:
                    ledger.remove(var, ledger_id)
                    entries.append(ledger_id)
            # the bytes of earlier versions only the remaining ledgers can still ask for
            kept = {
                record.pre.sha256
                for ledger_id in ledger.entries(var)
                if (entry := ledger.read(var, ledger_id)) is not None
                for record in entry.paths
                if record.pre is not None and record.pre.sha256
            }
            ledger.prune_blobs(var, kept)
        sysroot.cleanup()  # unreferenced boot dirs, and the prune of now unreferenced objects
    return CleanupResult(dirs, refs, entries)
