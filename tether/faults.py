"""Fault injection at step boundaries, for tests: crash or fail tether at a named instant.

`checkpoint(name)` marks a boundary between two steps of an operation (after the
pull, after compose, after `deploy_tree`, after each deploy hook, after the
ledger write, around `write_deployments`). It does nothing unless the
environment variable `TETHER_FAULT` names it:

- `TETHER_FAULT=NAME` kills the process with SIGKILL there, as a power cut or
  the OOM killer would: no `finally`, no cleanup;
- `TETHER_FAULT=fail:NAME` raises `InjectedFault` there, as a failing step
  would: tether's own error handling runs;
- `NAME@N` (with or without `fail:`) acts at the Nth time the checkpoint is
  reached in the process (from 1), e.g. between the second and third deploy hook.

This is a test interface (tests/test_crash.py, tests/test_faults.py); nothing
sets TETHER_FAULT on a real machine.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

from tether.errors import TetherError

ENVIRONMENT_VARIABLE = "TETHER_FAULT"

# The checkpoints tether has, in the order an upgrade reaches them.
CHECKPOINTS = (
    "pulled",
    "composed",
    "deployed-tree",
    "deploy-hook-done",
    "ledger-written",
    "before-write-deployments",
    "after-write-deployments",
)

_reached: Counter[str] = Counter()


class InjectedFault(TetherError):
    """The failure `TETHER_FAULT=fail:NAME` asked for (exit 1)."""


def _parse(text: str) -> tuple[bool, str, int]:
    """`[fail:]NAME[@N]` as (fail, name, occurrence)."""
    fail = text.startswith("fail:")
    name = text.removeprefix("fail:")
    name, _, count = name.partition("@")
    return fail, name, int(count) if count.isdigit() and int(count) > 0 else 1


def checkpoint(name: str) -> None:
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    fail, target, occurrence = _parse(wanted)
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] != occurrence:
        return
    if fail:
        raise InjectedFault(f"injected failure at checkpoint {name} ({ENVIRONMENT_VARIABLE}={wanted})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
