"""`tether upgrade --preview`: the three-way merge and the drift rule, before anything is deployed.

Pulls and composes what the upgrade would deploy (repository objects may be
added; nothing else changes), then says which kargs change, which paths the
previous bundle's steps changed will be reset or kept as conflicts, and which
new OS or bundle defaults in /etc a local edit will shadow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from tether import ledger
from tether.compose import KEY_KARGS, KEY_KARGS_ABSENT, compose
from tether.edge.ostree import RepoTree
from tether.errors import NoUpdateError
from tether.etcstate import image_of
from tether.plan.etc import EtcAction, decide
from tether.plan.kargs import KargPlan, plan_kargs
from tether.sysroot import SysrootSession
from tether.upgrade import BundleSource, Report, describe_pair, pull_selected, select


@dataclass
class Preview:
    current: str
    target: str
    kargs: KargPlan
    current_kargs: tuple[str, ...]
    resets: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"Upgrade from {self.current} to {self.target} would:"]
        lines += [f"  remove karg  {k}" for k in self.kargs.removed]
        lines += [f"  add karg     {k}" for k in self.kargs.kernel_arguments if k not in self.current_kargs]
        lines += [f"  reset        /etc/{p} (a step of the current bundle changed it)" for p in self.resets]
        keep = "(changed since a step wrote it: kept, saved, reported)"
        lines += [f"  keep         /etc/{p} {keep}" for p in self.conflicts]
        lines += [f"  shadow       /etc/{p} (your local copy hides the new default)" for p in self.shadowed]
        if len(lines) == 1:
            lines.append("  change no karg and no /etc path you have edited")
        return lines


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shadowed_defaults(live_root: Path, new_tree: RepoTree) -> list[str]:
    """Locally edited /etc files whose default changes in the new tree (the merge keeps the local copy)."""
    live_etc, old_defaults = live_root / "etc", live_root / "usr/etc"
    shadowed = []
    for dirpath, _, filenames in os.walk(live_etc):
        for name in filenames:
            local = Path(dirpath) / name
            relative = local.relative_to(live_etc)
            old_image = image_of(old_defaults / relative)
            if local.is_symlink() or image_of(local) == old_image:
                continue  # not edited: the merge takes the new default
            new_default = new_tree.read(f"usr/etc/{relative}")
            if new_default is None:
                continue
            old_sha = old_image.sha256 if old_image is not None else None
            if _sha256(new_default) != old_sha:
                shadowed.append(str(relative))
    return sorted(shadowed)


def preview(
    sysroot_path: Path, stateroot: str | None, *, lock_timeout: float, progress: bool, report: Report
) -> Preview:
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot)
        merge = sysroot.merge_deployment(stateroot)
        remote = merge.origin_value("tether", "remote") if merge else None
        ref = merge.origin_value("tether", "bundle-ref") if merge else None
        if merge is None or not remote or not ref:
            raise NoUpdateError(f"stateroot {stateroot} has no deployment made by tether to upgrade")
        source = BundleSource(remote, ref)
        repo = sysroot.repo
        selection = select(repo, source, metadata_only=False, progress=progress)
        here = describe_pair(repo, merge.checksum)
        current = (merge.origin_value("tether", "os-commit"), merge.origin_value("tether", "bundle-commit"))
        if current == (selection.os_commit, selection.bundle_commit):
            raise NoUpdateError(f"No update available: already on {here}")
        pull_selected(repo, source, selection, progress)
        composed = compose(repo, selection.os_commit, selection.bundle_commit, bundle_ref=source.ref)
        var = sysroot.stateroot_var(stateroot)
        ledger_id = merge.origin_value("tether", "ledger-id")
        previous = ledger.read(var, ledger_id) if ledger_id else None
        declared = [str(k) for k in repo.commit(composed.checksum).metadata.get(KEY_KARGS, [])]
        absent = [str(k) for k in repo.commit(composed.checksum).metadata.get(KEY_KARGS_ABSENT, [])]
        kargs = plan_kargs(merge.kernel_arguments, previous.kargs_added if previous else (), declared, absent)
        result = Preview(here, describe_pair(repo, composed.checksum), kargs, merge.kernel_arguments)
        live_root = sysroot.deployment_dir(merge)
        for record in previous.paths if previous else ():
            action = decide(record, image_of(live_root / "etc" / record.path))
            if action is EtcAction.CONFLICT:
                result.conflicts.append(record.path)
            elif action is not EtcAction.NOTHING:
                result.resets.append(record.path)
        result.shadowed = shadowed_defaults(live_root, repo.tree(composed.checksum))
    return result
