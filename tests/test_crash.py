"""Crash consistency: `tether upgrade` killed with SIGKILL at any instant.

SPEC, Safety: killed at any instant, tether leaves the sysroot either as it was
or with the new deployment complete and default, and a rerun converges. One
template sysroot (two deployments, so the upgrade also drops one) is built per
module and copied for every round. Each round runs the real `tether upgrade`
in a subprocess and kills it, either at a named step boundary
(`TETHER_FAULT`, see tether/faults.py) or after a random delay within the
measured duration of a normal upgrade, then checks:

- the state (`World.snapshot()`, per-run ledger ids normalised) equals the
  state before or the state after a normal upgrade; unreferenced leftovers
  (deployment directories, origins, ledger entries) are allowed;
- `ostree fsck` passes;
- a rerun of `tether upgrade` converges to the after-state and removes every
  leftover the killed run made.

The random tier runs CRASH_ROUNDS rounds (50; 500 with TETHER_LONG=1; or
TETHER_CRASH_ROUNDS=N), seeded by TETHER_CRASH_SEED (printed on failure).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability import (
    SysrootState,
    copy_sysroot,
    deployment_dirs,
    fsck,
    remove_sysroot,
    run_tether,
    sysroot_state,
    tether_process,
    tmpfs,
)
from tests.world import World, tether
from tether.faults import CHECKPOINTS

LONG = os.environ.get("TETHER_LONG") == "1"
CRASH_ROUNDS = int(os.environ.get("TETHER_CRASH_ROUNDS", "500" if LONG else "50"))
CRASH_SEED = int(os.environ.get("TETHER_CRASH_SEED", "20261101"))

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = {kargs}

[system]
hostname = "kiosk-{version}"

[[file]]
path = "/etc/motd"
content = "kiosk {version}\\n"

[[hook]]
stage = "deploy"
run = "hooks/first.sh"

[[hook]]
stage = "deploy"
run = "hooks/second.sh"
"""

HOOKS = {
    "hooks/first.sh": "#!/bin/sh\necho first > /etc/first-hook\n",
    "hooks/second.sh": "#!/bin/sh\necho second > /etc/second-hook\n",
}


def _os_files(version: int) -> dict[str, bytes]:
    # enough new objects that a kill can land inside the pull of the OS commit
    return {f"usr/share/release-{version}/f{i:03d}": f"{version}:{i}\n".encode() * 64 for i in range(300)}


@dataclass
class Template:
    world: World
    sysroot: Path  # installed, then upgraded once: two deployments
    before: SysrootState
    after: SysrootState  # after a normal upgrade; its leftovers are the dropped deployment's
    duration: float  # of a normal `tether upgrade`, in seconds
    rounds_dir: Path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    with tmpfs(tmp_path_factory.mktemp("crash") / "tmpfs", "2G") as root:
        yield from _template(root)


def _template(root: Path) -> Iterator[Template]:
    world = World(root)
    for version, kargs in ((1, '["quiet"]'), (2, '["quiet", "splash"]')):
        world.publish_os(extra=_os_files(version))
        world.publish_bundle("kiosk", BUNDLE.format(version=version, kargs=kargs), HOOKS)
        if version == 1:
            assert world.install("kiosk", "--karg", "root=LABEL=root").code == 0
        else:
            assert world.run("upgrade").code == 0
    world.publish_os(extra=_os_files(3))
    world.publish_bundle("kiosk", BUNDLE.format(version=3, kargs='["splash", "v3"]'), HOOKS)
    before = sysroot_state(world)
    assert len(before.state["deployments"]) == 2 and not before.leftovers

    rounds = root / "rounds"
    rounds.mkdir()
    durations = []
    after: SysrootState | None = None
    for attempt in range(3):
        copy = copy_sysroot(world.sysroot, rounds / f"normal-{attempt}")
        start = time.monotonic()
        result = run_tether("upgrade", "--sysroot", copy)
        durations.append(time.monotonic() - start)
        assert result.returncode == 0, result.stderr
        state = sysroot_state(world, copy)
        assert after is None or state == after, "a normal upgrade is deterministic"
        after = state
        remove_sysroot(copy)
    assert after is not None and after.state != before.state
    [new, old] = after.state["deployments"]
    assert new["bundle"]["version"] == "3" and old["bundle"]["version"] == "2"
    yield Template(world, world.sysroot, before, after, max(durations), rounds)
    remove_sysroot(world.sysroot)


def _check_killed_round(template: Template, sysroot: Path, what: str) -> str:
    """The invariants after a kill, then the rerun; returns "before" or "after"."""
    killed = sysroot_state(template.world, sysroot)
    if killed.state == template.before.state:
        outcome = "before"
    elif killed.state == template.after.state:
        outcome = "after"
    else:
        differing = sorted(
            k
            for k in {*killed.state, *template.before.state}
            if killed.state.get(k) != template.before.state.get(k)
        )
        raise AssertionError(f"{what}: the sysroot is neither as it was nor upgraded; differs in {differing}")
    checked = fsck(sysroot)
    assert checked.returncode == 0, f"{what}: ostree fsck failed:\n{checked.stdout}{checked.stderr}"

    rerun = tether("upgrade", "--sysroot", sysroot)
    assert rerun.code == 0, f"{what}: the rerun failed: {rerun.err}"
    assert "Traceback" not in rerun.err
    converged = sysroot_state(template.world, sysroot)
    assert converged.state == template.after.state, f"{what}: the rerun did not converge"
    assert converged.leftovers <= template.after.leftovers, (
        f"{what}: the rerun left {sorted(converged.leftovers - template.after.leftovers)}"
    )
    referenced = {f"{d['checksum']}.{d['serial']}" for d in converged.state["deployments"]}
    assert set(deployment_dirs(sysroot)) == referenced, f"{what}: unreferenced deployment directories"
    checked = fsck(sysroot)
    assert checked.returncode == 0, f"{what}: ostree fsck failed after the rerun:\n{checked.stdout}"
    return outcome


def _round(template: Template, name: str) -> Path:
    return copy_sysroot(template.sysroot, template.rounds_dir / name)


# Every checkpoint tether has, and the second deploy hook's as well.
KILL_POINTS = [*CHECKPOINTS, "deploy-hook-done@2"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_at_checkpoint(template: Template, point: str) -> None:
    sysroot = _round(template, f"kill-{point}")
    process = tether_process(
        "upgrade", "--sysroot", sysroot, env={"TETHER_FAULT": point}, tmpdir=sysroot.with_suffix(".tmp")
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, f"not killed at {point}: {process.returncode} {err}"
    outcome = _check_killed_round(template, sysroot, f"killed at {point}")
    assert outcome == ("after" if point == "after-write-deployments" else "before")
    remove_sysroot(sysroot)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_failure_at_checkpoint(template: Template, point: str) -> None:
    """A step failing at each boundary: exit 1, one clear line; before the switch, nothing changed."""
    sysroot = _round(template, f"fail-{point}")
    result = run_tether("upgrade", "--sysroot", sysroot, env={"TETHER_FAULT": f"fail:{point}"})
    if point == "after-write-deployments":
        # the machine has switched: the new deployment stays, complete and default
        assert result.returncode == 1 and "Traceback" not in result.stderr, result
        assert sysroot_state(template.world, sysroot).state == template.after.state
    else:
        assert result.returncode == 1, result
        assert "injected failure" in result.stderr and "Traceback" not in result.stderr
        failed = sysroot_state(template.world, sysroot)
        assert failed.state == template.before.state
        assert failed.leftovers <= template.before.leftovers
    _check_killed_round(template, sysroot, f"failed at {point}")
    remove_sysroot(sysroot)


def _phase(stderr: str) -> str:
    """How far a run got, from what it reported."""
    for mark, phase in (
        ("Upgraded", "after the switch"),
        ("hooks/second.sh", "in the second hook or later"),
        ("hooks/first.sh", "in the first hook"),
        ("commit", "after compose"),
    ):
        if mark in stderr:
            return phase
    return "before compose"


def test_killed_at_random_instants(template: Template) -> None:
    rng = random.Random(CRASH_SEED)
    outcomes: Counter[str] = Counter()
    for index in range(CRASH_ROUNDS):
        delay = rng.uniform(0, template.duration)
        what = f"round {index} (seed {CRASH_SEED}, killed after {delay:.3f} s)"
        sysroot = _round(template, f"random-{index}")
        process = tether_process(
            "upgrade", "--sysroot", sysroot, tmpdir=sysroot.with_suffix(".tmp")
        )
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            outcome = "killed"
        else:
            outcome = "finished"
        out, err = process.communicate(timeout=120)
        assert outcome == "killed" or process.returncode == 0, f"{what}: {err}"
        state = _check_killed_round(template, sysroot, what)
        outcomes[f"{outcome} {_phase(out + err)}, sysroot {state}"] += 1
        remove_sysroot(sysroot)
    print(f"\ncrash rounds (seed {CRASH_SEED}, up to {template.duration:.2f} s):")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:4d}  {outcome}")
    assert sum(outcomes.values()) == CRASH_ROUNDS
