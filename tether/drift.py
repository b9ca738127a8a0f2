"""`tether drift`: what differs from the declaration in the current deployment.

The current deployment is the booted one, or offline the default one of the
stateroot. Its declaration is the bundle it carries at /usr/share/tether/bundle
and its ledger. Checks, each cheap enough for a timer on a real /etc: enforced
files edited, ledger paths changed since a step wrote them, conflicts kept at
the upgrade, declared kargs missing, owned kargs no longer declared, units not
in their declared state, and /etc files whose local copy shadows a newer OS
default (found by comparing the inodes of /usr/etc between this deployment and
the previous one: ostree hardlinks unchanged files, so only changed defaults
are read).
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from tether import ledger
from tether.bundle.manifest import load_bundle, read_source
from tether.bundle.model import Bundle, FilePolicy
from tether.edge.ostree import Deployment, Sysroot
from tether.errors import ManifestError, UsageError
from tether.etcstate import image_of
from tether.plan.tree import BUNDLE_COPY, TreeRemove, TreeSymlink, unit_edits
from tether.sysroot import resolve_stateroot


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str  # a path, karg or unit
    detail: str

    @property
    def path(self) -> str:
        return self.subject


class DeployedTree:
    """A deployment seen as an OS tree, with /usr/etc read from its live /etc."""

    def __init__(self, root: Path, live_etc: bool) -> None:
        self.root = root
        self.live_etc = live_etc

    def _path(self, path: PurePosixPath | str) -> Path:
        relative = PurePosixPath(str(path).lstrip("/"))
        if self.live_etc and relative.parts[:2] == ("usr", "etc"):
            relative = PurePosixPath("etc", *relative.parts[2:])
        return self.root / relative

    def kind(self, path: PurePosixPath | str) -> str | None:
        try:
            st = self._path(path).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            return "symlink"
        return "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"

    def read(self, path: PurePosixPath | str) -> bytes | None:
        return self._path(path).read_bytes() if self.kind(path) == "file" else None

    def readlink(self, path: PurePosixPath | str) -> str | None:
        return os.readlink(self._path(path)) if self.kind(path) == "symlink" else None

    def listdir(self, path: PurePosixPath | str) -> list[str]:
        return sorted(os.listdir(self._path(path))) if self.kind(path) == "directory" else []


def _current(sysroot: Sysroot, stateroot: str) -> tuple[Deployment, Deployment | None]:
    deployments = [d for d in sysroot.deployments() if d.stateroot == stateroot]
    if not deployments:
        raise UsageError(f"stateroot {stateroot} has no deployment")
    current = next((d for d in deployments if d.booted), deployments[0])
    previous = next((d for d in deployments if d.name != current.name), None)
    return current, previous


def _enforced(bundle: Bundle, root: Path) -> list[Finding]:
    findings = []
    for declared in bundle.files:
        if declared.policy is FilePolicy.ENFORCE and declared.path.is_relative_to("/etc"):
            relative = declared.path.relative_to("/etc")
            if image_of(root / "etc" / relative) != image_of(root / "usr/etc" / relative):
                findings.append(
                    Finding("enforced-edited", str(declared.path), "differs from the bundle's content")
                )
    return findings


def _ledger(entry: ledger.LedgerEntry, root: Path) -> list[Finding]:
    findings = []
    for record in entry.paths:
        if image_of(root / "etc" / record.path) != record.post:
            detail = f"changed since {record.step} wrote it; the next upgrade keeps it and reports a conflict"
            findings.append(Finding("ledger-changed", f"/etc/{record.path}", detail))
    for conflict in entry.conflicts:
        saved = f"; the earlier version is in /var/{conflict.saved}" if conflict.saved else ""
        findings.append(Finding("conflict", f"/etc/{conflict.path}", f"{conflict.reason}{saved}"))
    return findings


def _kargs(bundle: Bundle, entry: ledger.LedgerEntry | None, deployment: Deployment) -> list[Finding]:
    findings = []
    for karg in bundle.kernel.arguments:
        if karg not in deployment.kernel_arguments:
            findings.append(
                Finding("karg-missing", karg, "declared by the bundle, not on the kernel command line")
            )
    for karg in entry.kargs_added if entry else ():
        if karg in deployment.kernel_arguments and karg not in bundle.kernel.arguments:
            findings.append(Finding("karg-undeclared", karg, "added by tether, no longer declared"))
    return findings


def _units(bundle: Bundle, root: Path) -> list[Finding]:
    tree = DeployedTree(root, live_etc=True)
    findings = []
    for unit in bundle.units:
        # the plan removes every enablement link, then adds back those the state needs:
        # what counts is the last edit of each path
        final: dict[PurePosixPath, TreeSymlink | TreeRemove] = {}
        for edit in unit_edits(unit, tree, lambda source: read_source(bundle, source)):
            if isinstance(edit, TreeSymlink | TreeRemove) and edit.path.parts[:2] == ("usr", "etc"):
                final[edit.path] = edit
        for edit in final.values():
            live = "/" + str(PurePosixPath("etc", *edit.path.parts[2:]))
            if isinstance(edit, TreeSymlink) and tree.readlink(edit.path) != edit.target:
                detail = f"should be {unit.state}: {live} should link to {edit.target}"
                findings.append(Finding("unit-state", unit.name, detail))
            elif isinstance(edit, TreeRemove) and tree.kind(edit.path) is not None:
                findings.append(Finding("unit-state", unit.name, f"should be {unit.state}: {live} exists"))
    return findings


def _shadowed(root: Path, previous_root: Path | None) -> list[Finding]:
    if previous_root is None:
        return []
    findings = []
    defaults, old_defaults = root / "usr/etc", previous_root / "usr/etc"
    for dirpath, _, filenames in os.walk(defaults):
        for name in filenames:
            default = Path(dirpath) / name
            relative = default.relative_to(defaults)
            try:
                new, old = default.lstat(), (old_defaults / relative).lstat()
            except FileNotFoundError:
                continue
            if (new.st_ino, new.st_dev) == (old.st_ino, old.st_dev) or not stat.S_ISREG(new.st_mode):
                continue
            local = root / "etc" / relative
            if image_of(local) not in (image_of(default), None):
                detail = "the local copy shadows a newer OS default (the three-way merge kept it)"
                findings.append(Finding("shadowed-default", f"/etc/{relative}", detail))
    return findings


def drift(sysroot_path: Path, stateroot: str | None) -> tuple[Deployment, list[Finding]]:
    sysroot = Sysroot(sysroot_path)
    sysroot.load()
    stateroot = resolve_stateroot(sysroot, stateroot)
    current, previous = _current(sysroot, stateroot)
    root = sysroot.deployment_dir(current)
    try:
        bundle = load_bundle(root / BUNDLE_COPY)
    except (FileNotFoundError, ManifestError) as e:
        raise UsageError(f"deployment {current.name} carries no tether bundle ({e})") from e
    ledger_id = current.origin_value("tether", "ledger-id")
    entry = ledger.read(sysroot.stateroot_var(stateroot), ledger_id) if ledger_id else None
    findings = _enforced(bundle, root)
    findings += _ledger(entry, root) if entry else []
    findings += _kargs(bundle, entry, current)
    findings += _units(bundle, root)
    findings += _shadowed(root, sysroot.deployment_dir(previous) if previous else None)
    return current, findings


def as_json(deployment: Deployment, findings: list[Finding]) -> dict[str, object]:
    return {
        "deployment": {
            "stateroot": deployment.stateroot,
            "checksum": deployment.checksum,
            "serial": deployment.serial,
        },
        "findings": [{**asdict(f), "path": f.subject} for f in findings],
    }
