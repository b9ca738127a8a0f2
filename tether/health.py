"""Boot health: was this boot good, and rolling back a deployment whose first boot failed.

A boot is good when systemd reached `boot-complete.target`, that is when every unit ordered
before it and required by it succeeded: the OS's and the bundle's own checks, as in greenboot
and systemd's boot counting. tether ships one such unit, `tether-health-check.service`, which
runs the executables in `required.d/` (a failure fails the boot) and `wanted.d/` (reported
only) under /usr/lib/tether/health/ and /etc/tether/health/, so a bundle can add a check as a
plain file. Once boot-complete.target's job has finished either way, `tether-health.service`
asks for the verdict: the outcome is recorded per deployment (by ledger id) in
/var/lib/tether/health.json, and a deployment that fails a boot before it was ever known good
is rolled back: the previous deployment becomes the default and the machine reboots.

The decision (`decide`) is pure. It never rolls back a deployment that has had a good boot (a
later failure is the machine's, not the update's), nor to a deployment that itself failed and
was never good, nor when the booted deployment is not the default (someone already chose).
Rolling back from user space cannot help a boot that hangs or panics before user space: that
needs the boot loader's boot counting (docs/booting.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.edge.run import run
from tether.errors import CommandError, UsageError

HEALTH_FILE = Path("lib/tether/health.json")  # relative to the stateroot's /var
CHECK_DIRS = (Path("/usr/lib/tether/health"), Path("/etc/tether/health"))
CHECK_TIMEOUT = 300.0
BOOT_COMPLETE = "boot-complete.target"
GOOD, FAILED = "good", "failed"


# --- checks: required.d and wanted.d ---------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    path: Path
    required: bool
    ok: bool
    detail: str


def check_scripts(dirs: Iterable[Path], kind: str) -> list[Path]:
    """Executables in `<dir>/<kind>.d/`, by name; a later dir's file overrides an earlier one's."""
    found: dict[str, Path] = {}
    for directory in dirs:
        folder = directory / f"{kind}.d"
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_file() and os.access(entry, os.X_OK):
                    found[entry.name] = entry
    return [found[name] for name in sorted(found)]


def run_checks(dirs: Iterable[Path] = CHECK_DIRS, timeout: float = CHECK_TIMEOUT) -> list[CheckResult]:
    dirs = list(dirs)
    results = []
    for kind in ("required", "wanted"):
        for script in check_scripts(dirs, kind):
            try:
                run([script], timeout=timeout, capture=True, what=f"health check {script}")
                results.append(CheckResult(script, kind == "required", True, "passed"))
            except CommandError as e:
                results.append(CheckResult(script, kind == "required", False, str(e).splitlines()[0]))
    return results


# --- the record of boots ---------------------------------------------------------------------


def failed_pair(var: Path, os_commit: str, bundle_commit: str) -> dict[str, Any] | None:
    """The health entry of this OS + bundle pair if it failed a boot here and never had a good one."""
    for entry in read_record(var)["deployments"].values():
        same = (entry.get("os_commit"), entry.get("bundle_commit")) == (os_commit, bundle_commit)
        if same and entry.get("status") == FAILED and not entry.get("good_boots"):
            return dict(entry)
    return None


def read_record(var: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((var / HEALTH_FILE).read_text())
    except FileNotFoundError:
        record = {}
    record.setdefault("deployments", {})
    record.setdefault("events", [])
    return record


def write_record(var: Path, record: dict[str, Any]) -> None:
    from tether.ledger import write_atomically

    data = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
    write_atomically(var / HEALTH_FILE, data)


# --- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A deployment as the decision sees it."""

    key: str  # ledger id, or checksum.serial for a deployment tether did not make
    version: str
    status: str | None  # GOOD, FAILED or None (no boot recorded)
    ever_good: bool


@dataclass(frozen=True)
class Decision:
    healthy: bool
    rollback_to: Candidate | None
    reason: str


def decide(healthy: bool, booted: Candidate, booted_is_default: bool, previous: Candidate | None) -> Decision:
    if healthy:
        return Decision(True, None, f"{booted.version} booted and reached {BOOT_COMPLETE}")
    if booted.ever_good:
        why = "it has booted well before, so the failure is not the update's: staying"
    elif not booted_is_default:
        why = "it is not the default deployment (a rollback or a choice was made already): staying"
    elif previous is None:
        why = "there is no previous deployment to roll back to: staying"
    elif previous.status == FAILED and not previous.ever_good:
        why = f"the previous deployment {previous.version} failed too: staying"
    else:
        return Decision(False, previous, f"rolling back to {previous.version}")
    return Decision(False, None, why)


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    rolled_back: bool
    message: str


def failed_units() -> list[str]:
    listing = run(
        ["systemctl", "list-units", "--failed", "--plain", "--no-legend"], capture=True, check=False
    )
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def boot_completed() -> bool:
    state = run(["systemctl", "is-active", BOOT_COMPLETE], capture=True, check=False)
    return state.stdout.strip() == "active"


def verdict(
    sysroot_path: Path,
    stateroot: str | None,
    lock_timeout: float,
    *,
    healthy: Callable[[], bool] = boot_completed,
    failures: Callable[[], list[str]] = failed_units,
) -> Verdict:
    """Judge the running boot, record it, and roll back when `decide` says so (no reboot here)."""
    from tether.admin import rollback
    from tether.edge.ostree import Deployment, Sysroot
    from tether.sysroot import resolve_stateroot

    sysroot = Sysroot(sysroot_path)
    sysroot.load()
    booted = sysroot.booted()
    if booted is None:
        raise UsageError("health verdict judges the running boot: there is no booted deployment here")
    stateroot = stateroot or resolve_stateroot(sysroot, None)
    var = sysroot.stateroot_var(stateroot)
    record = read_record(var)
    ours = [d for d in sysroot.deployments() if d.stateroot == stateroot]

    def key(d: Deployment) -> str:
        return d.origin_value("tether", "ledger-id") or d.name

    def candidate(d: Deployment) -> Candidate:
        entry = record["deployments"].get(key(d), {})
        version = sysroot.repo.commit(d.checksum).version or d.checksum[:12]
        return Candidate(key(d), version, entry.get("status"), bool(entry.get("good_boots")))

    others = [d for d in ours if d.name != booted.name]
    current = candidate(booted)
    ok = healthy()
    failed = [] if ok else failures()
    is_default = bool(ours) and ours[0].name == booted.name
    decision = decide(ok, current, is_default, candidate(others[0]) if others else None)

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = record["deployments"].setdefault(current.key, {})
    entry.update({"deployment": booted.name, "version": current.version, "last_boot": now})
    # the pair, so that `tether upgrade` can refuse to deploy a failed one again
    for field_name in ("os-commit", "bundle-commit"):
        value = booted.origin_value("tether", field_name)
        if value:
            entry[field_name.replace("-", "_")] = value
    entry["status"] = GOOD if ok else FAILED
    entry["good_boots" if ok else "failed_boots"] = entry.get("good_boots" if ok else "failed_boots", 0) + 1
    if not ok:
        entry["failed_units"] = failed
    if decision.rollback_to is not None:
        record["events"].append(
            {
                "at": now,
                "event": "rollback",
                "from": current.version,
                "to": decision.rollback_to.version,
                "failed_units": failed,
            }
        )
    # Recorded before the rollback: if the rollback fails, the record still says why it was tried.
    write_record(var, record)
    if decision.rollback_to is not None:
        rollback(sysroot_path, stateroot, lock_timeout)
    if ok:
        message = f"Boot health: good: {decision.reason}"
    else:
        units = ", ".join(failed) or f"{BOOT_COMPLETE} not reached"
        message = f"Boot health: {current.version} failed ({units}); {decision.reason}"
    return Verdict(ok, decision.rollback_to is not None, message)
