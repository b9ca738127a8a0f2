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

from tether import fstab, ledger
from tether.accounts import ACCOUNT_FILES, disable_accounts, merge_account_files, set_password_hashes
from tether.bundle.model import Bundle, FilePolicy, Stage
from tether.edge.sandbox import Sandbox, run_in_sandbox
from tether.errors import CommandError, StepFailedError
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
        if record.path in ACCOUNT_FILES:
            continue  # merged by entry, and accounts are disabled rather than removed
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
        self._defaults_root = new_root / "usr/etc"
        self._defaults: Snapshot | None = None
        self.records: list[PathRecord] = []

    @property
    def defaults(self) -> Snapshot:
        # hashed only when a step runs: most upgrades have none
        if self._defaults is None:
            self._defaults = snapshot(self._defaults_root)
        return self._defaults

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


def prepare_etc(
    bundle: Bundle,
    previous: LedgerEntry | None,
    live_etc: Path | None,
    new_root: Path,
    var: Path,
    ledger_id: str,
    report: Report,
) -> EtcOutcome:
    """Everything the drift rule does to the new /etc before the new bundle's steps run."""
    outcome = EtcOutcome()
    if previous is not None and live_etc is not None:
        outcome = reset_previous(previous, live_etc, new_root, var, ledger_id, report)
    etc, defaults = new_root / "etc", new_root / "usr/etc"
    for name in merge_account_files(etc, defaults):
        report(f"Merged /etc/{name} by entry: kept local entries, added the new OS's")
    if previous is not None:
        undeclared = set(previous.accounts) - {u.name for u in bundle.users}
        for name in disable_accounts(etc, undeclared) if undeclared else []:
            report(f"Disabled account {name}: no longer declared (its files are kept)")
    outcome.enforced = enforce_files(bundle, new_root, var, ledger_id, report)
    if fstab.update(etc, bundle):
        report("Updated the bundle's lines in /etc/fstab")
    return outcome


def run_sysusers(
    bundle: Bundle, new_root: Path, var: Path, recorder: StepRecorder, report: Report
) -> list[ledger.StepRecord]:
    """The bundle's accounts, made now by the OS's own systemd-sysusers when it has one."""
    if not (bundle.users or bundle.groups):
        return []
    sysusers = next(
        (p for p in ("usr/bin/systemd-sysusers", "bin/systemd-sysusers") if (new_root / p).exists()), None
    )
    records = []
    if sysusers is None:
        report("The OS tree has no systemd-sysusers: the bundle's accounts are made at boot")
    else:

        def make_accounts() -> None:
            try:
                run_in_sandbox(Sandbox.deploy(new_root, var), ["/" + sysusers], timeout=300, network=False)
            except CommandError as e:
                raise StepFailedError(f"systemd-sysusers failed for the bundle's accounts: {e}") from e

        changes = recorder.run("systemd-sysusers", make_accounts)
        records.append(
            ledger.StepRecord("accounts", "systemd-sysusers", Stage.DEPLOY.value, "ok", {}, changes)
        )
    hashes = {u.name: u.password_hash for u in bundle.users if u.password_hash}
    if hashes:

        def set_hashes() -> None:
            set_password_hashes(new_root / "etc", hashes)

        changes = recorder.run("password-hash", set_hashes)
        records.append(ledger.StepRecord("accounts", "password-hash", Stage.DEPLOY.value, "ok", {}, changes))
    return records


def finish_etc(bundle: Bundle, new_root: Path, report: Report) -> None:
    """Checks the new /etc must pass before the deployment may become the default."""
    fstab.verify(new_root / "etc/fstab")
