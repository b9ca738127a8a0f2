"""Shared by the reliability tiers (crash, lock, faults, hostile bundles): sysroot copies and states.

`sysroot_state` is `World.snapshot()` (SPEC's "as it was") split in two: the
state proper, with per-run ledger ids replaced by the deployment they belong to
so two runs of the same upgrade compare equal, and the leftovers: deployment
directories, origins and ledger entries no deployment references, which a
crash may leave and the next run must remove. `tether_process` runs the real
`tether` executable, so a test can kill it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.world import World
from tether.edge.ostree import clear_immutable

_LEDGER_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")  # a uuid4 hex
_TETHER_VAR = "lib/tether"


@dataclass(frozen=True)
class SysrootState:
    state: dict[str, Any]
    leftovers: frozenset[str]


def tether_command() -> list[str]:
    """The installed `tether` executable next to this Python (`.venv/bin/tether`)."""
    script = Path(sys.executable).parent / "tether"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tether"]


def tether_process(
    *argv: str | Path, env: Mapping[str, str] | None = None, tmpdir: Path | None = None
) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TETHER_FAULT"}
    environment.update(env or {})
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        environment["TMPDIR"] = str(tmpdir)
    return subprocess.Popen(
        [*tether_command(), *(str(a) for a in argv)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    )


def run_tether(
    *argv: str | Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    process = tether_process(*argv, env=env)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1G") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (as root), unmounted afterwards; else the plain directory.

    Rounds that write sysroots many times run on it: libostree syncs the whole
    file system at every deployment switch, which on a shared disk costs the
    I/O of everything else the machine does.
    """
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tether-test", str(path)]
    mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    try:
        yield path
    finally:
        if mounted:
            for sysroot in [p.parent.parent.parent.parent for p in path.glob("**/ostree/deploy/*/deploy")]:
                for deployment in sysroot.glob("ostree/deploy/*/deploy/*"):
                    if deployment.is_dir() and not deployment.is_symlink():
                        clear_immutable(deployment)
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def copy_sysroot(source: Path, destination: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(destination)], check=True)
    return destination


def remove_sysroot(path: Path) -> None:
    """Remove a sysroot directory; ostree makes deployment roots immutable."""
    for deployment in path.glob("ostree/deploy/*/deploy/*"):
        if deployment.is_dir() and not deployment.is_symlink():
            clear_immutable(deployment)
    shutil.rmtree(path)


def fsck(sysroot: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ostree", "fsck", f"--repo={sysroot}/ostree/repo"], capture_output=True, text=True, check=False
    )


def sysroot_state(world: World, sysroot: Path | None = None) -> SysrootState:
    view = copy.copy(world)
    view.sysroot = sysroot or world.sysroot
    snapshot = view.snapshot()
    referenced = {f"{d['checksum']}.{d['serial']}" for d in snapshot["deployments"]}
    names: dict[str, str] = {}
    for origin in view.sysroot.glob("ostree/deploy/*/deploy/*.origin"):
        deployment = origin.name.removesuffix(".origin")
        match = re.search(r"^ledger-id=(\S+)$", origin.read_text(), re.MULTILINE)
        if match and deployment in referenced:
            names[match[1]] = f"<ledger of {deployment}>"

    def rename(text: str) -> str:
        for ledger_id, name in names.items():
            text = text.replace(ledger_id, name)
        return text

    leftovers: set[str] = set()
    for var in view.sysroot.glob("ostree/deploy/*/var"):
        leftovers |= _tether_var_leftovers(var, names, f"var:{var.parent.name}")
    state: dict[str, Any] = {}
    for key, value in snapshot.items():
        kind, _, name = key.partition(":")
        if kind in ("etc", "origin", "ledger") and name.removesuffix(".origin") not in referenced:
            leftovers.add(key)
        elif kind in ("origin", "ledger"):
            state[key] = rename(value) if isinstance(value, str) else value
        elif kind == "var":
            var = view.sysroot / "ostree/deploy" / name / "var"
            state[key] = _var_state(var, value, rename, leftovers, key)
        else:
            state[key] = value
    return SysrootState(state, frozenset(leftovers))


def _tether_var_leftovers(var: Path, names: dict[str, str], prefix: str) -> set[str]:
    """Entries of tether's records in /var that belong to no deployment of the list."""
    leftovers = set()
    for path in sorted((var / _TETHER_VAR).rglob("*")):
        relative = str(path.relative_to(var))
        ids = _LEDGER_ID.findall(relative)
        if any(i not in names for i in ids) or path.name.endswith(".tmp"):
            leftovers.add(f"{prefix}/{relative}")
    return leftovers


def _var_state(
    var: Path, digest: dict[str, str], rename: Callable[[str], str], leftovers: set[str], prefix: str
) -> dict[str, str]:
    result: dict[str, str] = {}
    for path, value in digest.items():
        if f"{prefix}/{path}" in leftovers:
            continue
        if path.startswith(_TETHER_VAR + "/"):
            if value.startswith("file:"):
                # a ledger document names its own id: hash it with the id replaced
                content = rename((var / path).read_bytes().decode(errors="replace"))
                rest = value.split(":", 2)[2]
                value = "file:" + hashlib.sha256(content.encode()).hexdigest() + ":" + rest
            path = rename(path)
        result[path] = value
    return result


def deployment_dirs(sysroot: Path) -> list[str]:
    return sorted(
        p.name for p in sysroot.glob("ostree/deploy/*/deploy/*") if p.is_dir() and not p.is_symlink()
    )
