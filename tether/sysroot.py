"""A locked sysroot session and the rules every host command shares.

Host commands open the sysroot, take libostree's sysroot lock (one tether
operation at a time), resolve the stateroot (the booted one, else the only or
default one), and refuse to run while another tool's staged deployment is
pending. This module also writes tether's origins and removes deployment
directories a crash left unreferenced.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tether import ledger
from tether.compose import compose_ref
from tether.edge.ostree import Sysroot, clear_immutable
from tether.errors import TetherError, UsageError

if TYPE_CHECKING:
    from tether.upgrade import BundleSource, Selection

_DEPLOYMENT_NAME = re.compile(r"[0-9a-f]{64}\.[0-9]+")
_LEDGER_ID = re.compile(r"[0-9a-f]{32}(?![0-9a-f])")  # what ledger.new_id() makes, heading a name


class SysrootSession:
    def __init__(self, path: Path, lock_timeout: float, report: Callable[[str], None] | None = None) -> None:
        self.sysroot = Sysroot(path)
        self._lock_timeout = lock_timeout
        self._report = report

    def __enter__(self) -> Self:
        self.sysroot.load()

        def waiting() -> None:
            if self._report:
                self._report(f"Waiting for another operation to release the lock of {self.sysroot.path}...")

        self.sysroot.lock(self._lock_timeout, waiting)
        self.sysroot.reload()
        staged = self.sysroot.staged()
        if staged is not None:
            self.sysroot.unlock()
            raise TetherError(
                f"a staged deployment is pending ({staged.name}, stateroot {staged.stateroot}), "
                "made by another tool (ostree admin deploy --stage, rpm-ostree, bootc): "
                "reboot into it or remove it first"
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sysroot.unlock()

    def stateroot(self, requested: str | None) -> str:
        return resolve_stateroot(self.sysroot, requested)


def resolve_stateroot(sysroot: Sysroot, requested: str | None) -> str:
    names = sysroot.stateroots()
    if requested is not None:
        if requested not in names:
            raise UsageError(
                f"no stateroot {requested} in {sysroot.path} (have: {', '.join(names) or 'none'})"
            )
        return requested
    booted = sysroot.booted()
    if booted is not None:
        return booted.stateroot
    if len(names) == 1:
        return names[0]
    deployments = sysroot.deployments()
    if deployments:
        return deployments[0].stateroot
    raise UsageError(f"{sysroot.path} has {len(names)} stateroots and no deployment: give --stateroot")


def origin_for(
    source: BundleSource, selection: Selection, content_id: str, ledger_id: str
) -> Mapping[str, Mapping[str, str]]:
    return {
        "origin": {
            "refspec": compose_ref(content_id),
            # makes a plain `ostree admin upgrade` refuse instead of dropping the bundle
            "unconfigured-state": f"This deployment is managed by tether (bundle {source}); "
            "use 'tether upgrade' or 'tether switch'",
        },
        "tether": {
            "remote": source.remote,
            "bundle-ref": source.ref,
            "os-ref": selection.os_ref,
            "os-commit": selection.os_commit,
            "bundle-commit": selection.bundle_commit,
            "ledger-id": ledger_id,
        },
    }


def remove_unreferenced_deployments(sysroot: Sysroot, stateroot: str) -> list[str]:
    """Deployment directories no boot entry references: what a crash before the switch leaves."""
    directory = sysroot.path / "ostree" / "deploy" / stateroot / "deploy"
    if not directory.exists():
        return []
    referenced = {d.name for d in sysroot.deployments() if d.stateroot == stateroot}
    removed = []
    for entry in sorted(directory.iterdir()):
        name = entry.name.removesuffix(".origin")
        if not _DEPLOYMENT_NAME.fullmatch(name) or name in referenced:
            continue
        if entry.is_dir() and not entry.is_symlink():
            clear_immutable(entry)
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(name)
    return removed


def remove_unreferenced_ledger_entries(sysroot: Sysroot, stateroot: str) -> list[str]:
    """Ledger entries and step logs no listed deployment references, and half-written temporaries.

    A crash after the deploy steps and before the switch leaves them; the lock is
    held, so no other run is writing any of them.
    """
    var = sysroot.stateroot_var(stateroot)
    live = {d.origin_value("tether", "ledger-id") for d in sysroot.deployments() if d.stateroot == stateroot}
    recorded: set[str] = set()
    for directory in (ledger.ledger_dir(var), var / ledger.LOG_DIR):
        if directory.is_dir():
            recorded |= {m[0] for p in directory.iterdir() if (m := _LEDGER_ID.match(p.name))}
    removed = sorted(recorded - live)
    for ledger_id in removed:
        ledger.remove(var, ledger_id)
    for directory in (ledger.ledger_dir(var), var / ledger.BLOB_DIR):
        if directory.is_dir():
            for temporary in directory.glob(".*.tmp"):
                temporary.unlink(missing_ok=True)
    return removed


def remove_crash_leftovers(sysroot: Sysroot, stateroot: str) -> None:
    """What a run killed before its switch left: deployment directories, ledger entries."""
    remove_unreferenced_deployments(sysroot, stateroot)
    remove_unreferenced_ledger_entries(sysroot, stateroot)
