"""The drift rule carried out in a new deployment's /etc, at upgrade time.

After `deploy_tree` has made the new deployment (its /etc three-way merged from
the deployment we upgrade from), and before the new bundle's steps run:

1. every path the previous deployment's steps changed is reset as
   `tether.plan.etc` decides: to the new OS default, to the admin's earlier
   version, or kept (the admin changed it since) with a copy saved and the
   conflict reported;
2. files the bundle enforces get the bundle's content back, the local edit
   saved and reported;
3. each deploy step runs between two snapshots of /etc, and what it changed is
   recorded with pre- and post-images for the next upgrade.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tether import ledger
from tether.bundle.model import Bundle, FilePolicy
from tether.etcstate import (
    Image,
    Snapshot,
    confined,
    copy_entry,
    diff,
    image_of,
    remove,
    snapshot,
    write_image,
)
from tether.ledger import Conflict, LedgerEntry, PathRecord
from tether.plan.etc import EtcAction, decide

Report = Callable[[str], None]


@dataclass
class EtcOutcome:
    resets: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    enforced: list[Conflict] = field(default_factory=list)


def _depth(path: str) -> int:
    return path.count("/")


def reset_previous(
    previous: LedgerEntry,
    live_etc: Path,
    new_root: Path,
    var: Path,
    ledger_id: str,
    report: Report,
) -> EtcOutcome:
    new_etc, new_defaults = new_root / "etc", new_root / "usr/etc"
    outcome = EtcOutcome()
    removals: list[str] = []
    writes: list[tuple[str, Image | None, Path | None]] = []  # (path, image to write, or default to copy)
    for record in previous.paths:
        live = image_of(confined(live_etc, record.path))
        action = decide(record, live)
        if action is EtcAction.NOTHING:
            continue
        if action is EtcAction.CONFLICT:
            saved = ledger.save_copy(var, ledger_id, live_etc / record.path, record.path) if live else None
            reason = f"changed since step {record.step} wrote it: kept"
            outcome.conflicts.append(Conflict(record.path, saved, reason))
            where = f", a copy is in /var/{saved}" if saved else ""
            report(f"Conflict: /etc/{record.path} was changed after {record.step} wrote it; kept{where}")
            continue
        outcome.resets.append(record.path)
        if action is EtcAction.RESET_TO_DEFAULT:
            default = new_defaults / record.path
            if default.is_symlink() or default.exists():
                writes.append((record.path, None, default))
            else:
                removals.append(record.path)
        elif record.pre is None:
            removals.append(record.path)
        else:
            writes.append((record.path, record.pre, None))

    for path in sorted(removals, key=_depth, reverse=True):
        target = confined(new_etc, path)
        try:
            remove(target)
        except OSError:
            report(f"Kept /etc/{path}: it is a directory that still holds files")
    for path, image, source in sorted(writes, key=lambda w: _depth(w[0])):
        destination = confined(new_etc, path)
        if source is not None:
            copy_entry(source, destination)
            continue
        assert image is not None
        content = ledger.read_blob(var, image.sha256) if image.kind == "file" and image.sha256 else None
        if image.kind == "file" and content is None:
            outcome.conflicts.append(Conflict(path, None, "the earlier version was not kept; left as merged"))
            continue
        write_image(destination, image, content)
    if outcome.resets:
        report(f"Reset {len(outcome.resets)} /etc path(s) the previous bundle's steps had changed")
    return outcome


def enforce_files(
    bundle: Bundle, new_root: Path, var: Path, ledger_id: str, report: Report
) -> list[Conflict]:
    """`policy = "enforce"`: the composed default (the bundle's content) wins over a local edit."""
    enforced = []
    for declared in bundle.files:
        if declared.policy is not FilePolicy.ENFORCE or not declared.path.is_relative_to("/etc"):
            continue
        relative = str(declared.path.relative_to("/etc"))
        current, default = confined(new_root / "etc", relative), new_root / "usr/etc" / relative
        if image_of(current) == image_of(default):
            continue
        saved = ledger.save_copy(var, ledger_id, current, relative) if image_of(current) else None
        copy_entry(default, current)
        enforced.append(Conflict(relative, saved, "enforced: the local version was replaced"))
        where = f"; the local version is in /var/{saved}" if saved else ""
        report(f"Enforced /etc/{relative} from the bundle{where}")
    return enforced


class StepRecorder:
    """Snapshots /etc around each deploy step and records what changed."""

    def __init__(self, new_root: Path, var: Path) -> None:
        self.etc = new_root / "etc"
        self.var = var
        self.defaults: Snapshot = snapshot(new_root / "usr/etc")
        self.records: list[PathRecord] = []

    def _keep_local_versions(self, before: Snapshot) -> None:
        # what is not an OS default may be the admin's own edit: keep its bytes so a
        # later upgrade can put it back once the step that changes it is gone
        for path, image in before.items():
            if image.kind == "file" and image != self.defaults.get(path):
                assert image.sha256 is not None
                if ledger.read_blob(self.var, image.sha256) is None:
                    ledger.store_blob(self.var, (self.etc / path).read_bytes())

    def run(self, name: str, step: Callable[[], None]) -> tuple[tuple[str, str], ...]:
        before = snapshot(self.etc)
        self._keep_local_versions(before)
        step()
        changes = diff(before, snapshot(self.etc))
        for change in changes:
            pre_is_default = change.pre is None or change.pre == self.defaults.get(change.path)
            self.records.append(PathRecord(change.path, change.pre, change.post, pre_is_default, name))
        return tuple((f"/etc/{c.path}", c.verb) for c in changes)
