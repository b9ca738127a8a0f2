"""One operation at a time: every mutating command takes libostree's sysroot lock.

A second operation waits, saying so, up to --lock-timeout; past it, it exits 6
having changed nothing. Two real `tether upgrade` processes race, the first
held inside a deploy hook that waits for the test's signal.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import sysroot_state, tether_process, tmpfs
from tests.world import REMOTE, World, tether
from tether.edge.ostree import Sysroot

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"
{hook}
"""

HELD_HOOK = """
[[hook]]
stage = "deploy"
run = "hooks/held.sh"
timeout = "60s"
"""

# Waits (at most 60 s) for the test to create /var/release in the stateroot's /var.
HELD_SCRIPT = """#!/bin/sh
i=0
while [ ! -e /var/release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo held > /etc/held
"""

WAITING = "Waiting for another operation to release the lock"


@pytest.fixture
def fast_world(tmp_path: Path) -> Iterator[World]:
    with tmpfs(tmp_path / "tmpfs", "512M") as root:
        yield World(root)


@pytest.fixture
def installed(fast_world: World) -> World:
    fast_world.publish_os()
    fast_world.publish_bundle("kiosk", BUNDLE.format(version="1", hook=""))
    assert fast_world.install().code == 0
    return fast_world


def _read_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """What the process wrote to stderr, up to the line containing `text`."""
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}; stderr so far:\n{seen}")


def _release(world: World) -> Path:
    release = world.sysroot / "ostree/deploy/exampleos/var/release"
    release.write_text("")
    return release


@pytest.fixture
def held_upgrade(installed: World) -> Iterator[tuple[World, subprocess.Popen[str]]]:
    """A real `tether upgrade` holding the lock, inside its deploy hook until released."""
    world = installed
    world.publish_os()
    world.publish_bundle(
        "kiosk", BUNDLE.format(version="2", hook=HELD_HOOK), {"hooks/held.sh": HELD_SCRIPT}
    )
    first = tether_process("upgrade", "--sysroot", world.sysroot)
    _read_until(first, "Running deploy hook hooks/held.sh")
    yield world, first
    if first.poll() is None:
        first.kill()
        first.wait()


def _finish(world: World, first: subprocess.Popen[str]) -> None:
    release = _release(world)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert "Upgraded" in out
    release.unlink()


def test_second_upgrade_times_out_with_exit_6_and_changes_nothing(
    held_upgrade: tuple[World, subprocess.Popen[str]],
) -> None:
    world, first = held_upgrade
    before = sysroot_state(world)
    second = tether_process("upgrade", "--sysroot", world.sysroot, "--lock-timeout", "1")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 6, (out, err)
    assert WAITING in err
    assert "another operation holds the lock" in err and "Traceback" not in err
    assert sysroot_state(world) == before, "the waiting upgrade changed nothing"
    assert first.poll() is None, "the first upgrade still holds the lock"
    _finish(world, first)
    [new, old] = world.status()
    assert new["bundle"]["version"] == "2" and old["bundle"]["version"] == "1"


def test_second_upgrade_waits_then_finds_nothing_to_do(
    held_upgrade: tuple[World, subprocess.Popen[str]],
) -> None:
    world, first = held_upgrade
    second = tether_process("upgrade", "--sysroot", world.sysroot, "--lock-timeout", "60")
    _read_until(second, WAITING)
    time.sleep(0.5)
    assert second.poll() is None, "the second upgrade waits for the lock"
    _finish(world, first)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "No update available" in out
    assert [d["bundle"]["version"] for d in world.status()] == ["2", "1"], "one upgrade, not two"


MUTATING = {
    "upgrade": ["upgrade"],
    "upgrade --check": ["upgrade", "--check"],
    "switch": ["switch", f"{REMOTE}:exampleos/x86_64/kiosk"],
    "rollback": ["rollback"],
    "cleanup": ["cleanup"],
    "install": [
        "install",
        "--stateroot",
        "other",
        "--remote",
        f"{REMOTE}=file:///nonexistent",
        "--no-gpg-verify",
        "--bundle",
        f"{REMOTE}:exampleos/x86_64/kiosk",
    ],
}


@pytest.mark.parametrize("command", MUTATING)
def test_every_mutating_command_takes_the_lock(installed: World, command: str) -> None:
    world = installed
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", hook=""))
    assert world.run("upgrade").code == 0  # two deployments, so rollback has something to do
    before = sysroot_state(world)
    holder = Sysroot(world.sysroot)
    holder.load()
    holder.lock(0)
    try:
        if command == "install":
            # install's --remote must not clash with the existing one to reach the lock
            argv = [a.replace("file:///nonexistent", world.remote_url) for a in MUTATING[command]]
        else:
            argv = MUTATING[command]
        result = tether(*argv, "--sysroot", world.sysroot, "--lock-timeout", "0.5")
        assert result.code == 6, result
        assert WAITING in result.err and "Traceback" not in result.err
        status = tether("status", "--sysroot", world.sysroot)
        assert status.code == 0, "status reads without the lock"
    finally:
        holder.unlock()
    assert sysroot_state(world) == before
    result = tether(*argv, "--sysroot", world.sysroot, "--lock-timeout", "0.5")
    assert result.code in (0, 77), result
