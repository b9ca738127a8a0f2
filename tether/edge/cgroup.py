"""A process limit for sandboxed steps: a fork bomb in a bundle's hook stays bounded.

bubblewrap has no process limit, and RLIMIT_NPROC (`prlimit --nproc`) does not
bind steps that run as root: the kernel exempts uid 0 from it. So each step
runs in a cgroup of its own whose `pids.max` bounds it: under the unified
hierarchy when its root offers the pids controller (cgroup v2), else under the
v1 pids hierarchy. The step's command starts through a launcher that joins the
cgroup and then execs it, so none of its processes is ever outside the limit.
Where no cgroup can be made (no pids controller, no permission) the step runs
without a limit and a debug line says so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("tether")

# Processes and threads a step may have at once: Ansible with its workers needs a
# few dozen; a fork bomb stops here.
PIDS_MAX = 1024

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "tether-step-"
# An empty step cgroup this old belongs to a tether that was killed.
_STALE_AFTER = 60.0

# Run by the interpreter in isolated mode (no site, no environment), as root:
# join the cgroup whose cgroup.procs is argv[1], then become argv[2:].
_LAUNCHER = """\
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"0")
os.close(fd)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.stderr.write(f"{sys.argv[2]}: {e.strerror}\\n")
    os._exit(127 if e.errno == 2 else 126)
"""


def _parent() -> Path | None:
    """Where a pids-limited cgroup can be made on this host, if anywhere."""
    unified = CGROUP_ROOT / "cgroup.subtree_control"
    with contextlib.suppress(OSError):
        if "pids" in unified.read_text().split():
            return CGROUP_ROOT
    v1 = CGROUP_ROOT / "pids"
    if (v1 / "cgroup.procs").exists():
        return v1
    return None


def available() -> bool:
    """Whether steps run with a process limit on this host."""
    return _parent() is not None


def _make(limit: int) -> Path | None:
    parent = _parent()
    if parent is None:
        log.debug("no pids cgroup controller: sandboxed steps run without a process limit")
        return None
    _remove_stale(parent)
    directory = parent / f"{_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        directory.mkdir()
    except OSError as e:
        log.debug("cannot make a cgroup in %s (%s): steps run without a process limit", parent, e.strerror)
        return None
    try:
        (directory / "pids.max").write_text(f"{limit}\n")
    except OSError as e:
        log.debug(
            "cannot limit processes in %s (%s): steps run without a process limit", directory, e.strerror
        )
        _remove(directory)
        return None
    return directory


def _remove_stale(parent: Path) -> None:
    """Empty step cgroups a killed tether left behind; a live one is never empty for long."""
    for directory in parent.glob(f"{_PREFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - directory.stat().st_mtime > _STALE_AFTER:
                directory.rmdir()  # refused (EBUSY) while processes are in it


def _remove(directory: Path) -> None:
    """Kill what is left in the cgroup (normally nothing: the pid namespace died) and remove it."""
    deadline = time.monotonic() + 5
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                log.debug("cannot remove cgroup %s: %s", directory, e.strerror)
                return
        with contextlib.suppress(OSError):
            for pid in (directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def pids_limited(limit: int | None = None) -> Iterator[list[str]]:
    """The command prefix that runs a command in a new cgroup of at most `limit` processes.

    `limit` defaults to `PIDS_MAX`. The prefix is empty when this host cannot
    make a cgroup. The cgroup is removed on exit.
    """
    directory = _make(PIDS_MAX if limit is None else limit)
    if directory is None:
        yield []
        return
    try:
        yield [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(directory / "cgroup.procs")]
    finally:
        _remove(directory)
