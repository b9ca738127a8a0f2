"""SPEC's karg rule as a table: (merge kargs, previously added, declared) → (new kargs, owned, removed)."""

from __future__ import annotations

import pytest

from tether.plan.kargs import plan_kargs

CASES = [
    # first install: admin kargs first, declared appended in order
    (
        ["root=LABEL=root"],
        [],
        ["quiet", "console=ttyS0"],
        ["root=LABEL=root", "quiet", "console=ttyS0"],
        ["quiet", "console=ttyS0"],
        [],
    ),
    # a karg dropped from the bundle is removed; a new one appended
    (
        ["root=LABEL=root", "quiet", "console=ttyS0"],
        ["quiet", "console=ttyS0"],
        ["quiet", "splash"],
        ["root=LABEL=root", "quiet", "splash"],
        ["quiet", "splash"],
        ["console=ttyS0"],
    ),
    # the admin had `quiet` before the bundle declared it: it is not tether's and stays
    (["root=LABEL=root", "quiet"], [], ["quiet"], ["root=LABEL=root", "quiet"], [], []),
    (["root=LABEL=root", "quiet"], [], [], ["root=LABEL=root", "quiet"], [], []),
    # an admin karg added after the install survives upgrades
    (
        ["root=LABEL=root", "quiet", "nosmt"],
        ["quiet"],
        ["quiet"],
        ["root=LABEL=root", "quiet", "nosmt"],
        ["quiet"],
        [],
    ),
    # whole-word comparison: a changed value is a different karg
    (
        ["console=ttyS0"],
        ["console=ttyS0"],
        ["console=ttyS1"],
        ["console=ttyS1"],
        ["console=ttyS1"],
        ["console=ttyS0"],
    ),
    # existing order is kept
    (["b", "a", "c"], ["a"], ["a", "d"], ["b", "a", "c", "d"], ["a", "d"], []),
    # ostree= is never touched nor reported
    (["ostree=/ostree/boot.1/x/y/0", "quiet"], ["quiet"], [], [], [], ["quiet"]),
    # a declared karg listed twice is added once
    ([], [], ["quiet", "quiet"], ["quiet"], ["quiet"], []),
]


@pytest.mark.parametrize(("current", "previous", "declared", "expected", "owned", "removed"), CASES)
def test_karg_rule(
    current: list[str],
    previous: list[str],
    declared: list[str],
    expected: list[str],
    owned: list[str],
    removed: list[str],
) -> None:
    plan = plan_kargs(current, previous, declared)
    assert list(plan.kernel_arguments) == expected
    assert list(plan.added) == owned
    assert list(plan.removed) == removed
