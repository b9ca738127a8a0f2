"""Boot health: the rollback decision as a table, the check runner and the record on disk.

The booted end to end (a failing check unit, the rollback, the reboot into the previous pair)
is in tests/boot/test_boot.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.world import World
from tether.health import (
    FAILED,
    GOOD,
    Candidate,
    check_scripts,
    decide,
    read_record,
    run_checks,
    write_record,
)

NEW = Candidate("new", "2+kiosk.3", None, False)
NEW_SEEN_GOOD = Candidate("new", "2+kiosk.3", FAILED, True)
PREVIOUS = Candidate("old", "2+kiosk.2", GOOD, True)
PREVIOUS_FAILED = Candidate("old", "2+kiosk.2", FAILED, False)
PREVIOUS_FAILED_ONCE = Candidate("old", "2+kiosk.2", FAILED, True)

CASES = [
    # healthy, booted, booted is default, previous -> rolls back to, reason contains
    (True, NEW, True, PREVIOUS, None, "reached boot-complete.target"),
    (False, NEW, True, PREVIOUS, "2+kiosk.2", "rolling back to 2+kiosk.2"),
    (False, NEW, True, PREVIOUS_FAILED_ONCE, "2+kiosk.2", "rolling back"),
    (False, NEW, True, None, None, "no previous deployment"),
    (False, NEW, True, PREVIOUS_FAILED, None, "failed too"),
    (False, NEW, False, PREVIOUS, None, "not the default"),
    (False, NEW_SEEN_GOOD, True, PREVIOUS, None, "booted well before"),
]


@pytest.mark.parametrize(("healthy", "booted", "is_default", "previous", "target", "reason"), CASES)
def test_decide(
    healthy: bool,
    booted: Candidate,
    is_default: bool,
    previous: Candidate | None,
    target: str | None,
    reason: str,
) -> None:
    decision = decide(healthy, booted, is_default, previous)
    assert decision.healthy is healthy
    assert (decision.rollback_to.version if decision.rollback_to else None) == target
    assert reason in decision.reason


def _script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def test_checks_run_required_and_wanted_and_etc_overrides_usr(tmp_path: Path) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    _script(usr / "required.d/10-disk", "exit 0")
    _script(usr / "required.d/20-display", "exit 3")
    _script(etc / "required.d/20-display", "exit 0")  # the admin's or bundle's version wins
    _script(etc / "required.d/30-network", "echo no route >&2; exit 1")
    _script(etc / "wanted.d/10-fan", "exit 1")
    _script(etc / "required.d/README", "not a check", mode=0o644)

    assert [p.name for p in check_scripts([usr, etc], "required")] == ["10-disk", "20-display", "30-network"]
    results = {r.path.name: r for r in run_checks([usr, etc])}
    assert set(results) == {"10-disk", "20-display", "30-network", "10-fan"}
    assert results["10-disk"].ok and results["20-display"].ok
    assert not results["30-network"].ok and results["30-network"].required
    assert "exited with code 1" in results["30-network"].detail
    assert not results["10-fan"].ok and not results["10-fan"].required


def test_record_round_trip(tmp_path: Path) -> None:
    assert read_record(tmp_path) == {"deployments": {}, "events": []}
    record = read_record(tmp_path)
    record["deployments"]["abc"] = {"status": GOOD, "good_boots": 1}
    write_record(tmp_path, record)
    assert read_record(tmp_path)["deployments"]["abc"]["status"] == GOOD
    assert not [p for p in (tmp_path / "lib/tether").iterdir() if p.name.startswith(".health-")]


def test_upgrade_refuses_a_pair_that_failed_its_health_check(world: World) -> None:
    bundle = '[bundle]\nname = "kiosk"\nversion = "{v}"\nos-ref = "exampleos/x86_64/stable"\n'
    world.publish_os()
    world.publish_bundle("kiosk", bundle.format(v="1"))
    assert world.install().code == 0
    os2 = world.publish_os()
    bad = world.publish_bundle("kiosk", bundle.format(v="2"))
    # what the verdict records when 2+kiosk.2 failed its first boot and was rolled back
    var = world.sysroot / "ostree/deploy/exampleos/var"
    failed = {
        "status": FAILED,
        "failed_boots": 1,
        "version": "2+kiosk.2",
        "os_commit": os2,
        "bundle_commit": bad,
        "failed_units": ["kiosk-check.service"],
    }
    installed = world.status()[0]
    assert installed["health"] is None, "never booted: no health record"
    origin = next((world.sysroot / "ostree/deploy/exampleos/deploy").glob("*.origin")).read_text()
    ledger_id = next(line.split("=", 1)[1] for line in origin.splitlines() if line.startswith("ledger-id="))
    good = {"status": GOOD, "good_boots": 3}
    write_record(var, {"deployments": {"ledger-id-of-2": failed, ledger_id: good}, "events": []})
    assert world.status()[0]["health"] == {
        "status": GOOD,
        "good_boots": 3,
        "failed_boots": 0,
        "failed_units": [],
    }
    assert "Health: good (3 good, 0 failed boot(s))" in world.run("status").out
    before = world.snapshot()
    result = world.run("upgrade")
    assert result.code == 1, result
    assert "failed its health check" in result.err and "kiosk-check.service" in result.err
    assert world.snapshot() == before
    assert world.run("upgrade", "--allow-failed").code == 0
    assert world.status()[0]["bundle"]["version"] == "2"
