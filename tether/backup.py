"""`tether backup` and `tether restore`: a machine's own state, to reprovision it from.

The OS and the bundle come from the remote; what only the machine has is its
/etc local changes (against the deployment's /usr/etc defaults, removed
defaults included), its /var (less caches, /var/tmp and container storage),
its origin, remote and keys, and tether's ledger (which lives in /var). A
backup is one GNU tar archive (owners, modes, xattrs and ACLs kept) written
mode 0600, with a JSON manifest first. machine-id and SSH host keys are left
out unless asked for: a backup restored on another machine must not clone its
identity.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether import ledger
from tether.edge.ostree import Deployment, Sysroot
from tether.edge.run import run
from tether.errors import UsageError
from tether.etcstate import image_of
from tether.sysroot import SysrootSession

Report = Callable[[str], None]
MANIFEST = "tether-backup.json"
FORMAT = 1
VAR_EXCLUDES = ("var/tmp", "var/cache", "var/lib/containers", "var/lib/docker", "var/lib/tether/saved")
IDENTITY = ("etc/machine-id",)
IDENTITY_PREFIXES = ("etc/ssh/ssh_host_",)
_TAR = ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]


@dataclass(frozen=True)
class BackupResult:
    path: Path
    etc_entries: int
    etc_removed: int
    deployment: str


def _current(sysroot: Sysroot, stateroot: str) -> Deployment:
    deployments = [d for d in sysroot.deployments() if d.stateroot == stateroot]
    if not deployments:
        raise UsageError(f"stateroot {stateroot} has no deployment")
    return next((d for d in deployments if d.booted), deployments[0])


def _is_identity(relative: str) -> bool:
    return relative in IDENTITY or any(relative.startswith(p) for p in IDENTITY_PREFIXES)


def etc_changes(root: Path, with_identity: bool) -> tuple[list[str], list[str]]:
    """(paths under etc/ that differ from the defaults, defaults the admin removed)."""
    etc, defaults = root / "etc", root / "usr/etc"
    changed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(etc):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            relative = str(path.relative_to(root))
            if not with_identity and _is_identity(relative):
                continue
            if image_of(path) != image_of(defaults / path.relative_to(etc)):
                changed.append(relative)
    removed = []
    for dirpath, _, filenames in os.walk(defaults):
        for name in filenames:
            default = Path(dirpath, name).relative_to(defaults)
            if not (etc / default).is_symlink() and not (etc / default).exists():
                removed.append(f"etc/{default}")
    return changed, sorted(removed)


def backup(
    sysroot_path: Path,
    stateroot: str | None,
    output: Path,
    *,
    with_identity: bool,
    lock_timeout: float,
    report: Report,
) -> BackupResult:
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot)
        deployment = _current(sysroot, stateroot)
        root = sysroot.deployment_dir(deployment)
        tether_origin = deployment.origin.get("tether", {})
        remote = tether_origin.get("remote")
        if not remote or not tether_origin.get("bundle-ref"):
            raise UsageError(
                f"deployment {deployment.name} was not made by tether: nothing to restore it from"
            )
        repo = sysroot.repo
        changed, removed = etc_changes(root, with_identity)
        ledger_id = tether_origin.get("ledger-id")
        entry = ledger.read(sysroot.stateroot_var(stateroot), ledger_id) if ledger_id else None
        owned = set(entry.kargs_added) if entry else set()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "created": int(time.time()),
            "stateroot": stateroot,
            "deployment": deployment.checksum,
            "origin": deployment.origin,
            "remote": {
                "name": remote,
                "url": repo.remote_url(remote),
                "gpg-verify": repo.remote_gpg_verify(remote),
            },
            "kernel_arguments": list(deployment.kernel_arguments),
            # the machine's own kargs (root=...), for `restore --install`: not the bundle's
            "admin_kernel_arguments": [k for k in deployment.kernel_arguments if k not in owned],
            "etc_removed": removed,
            "with_identity": with_identity,
        }
        with tempfile.TemporaryDirectory(prefix="tether-backup-") as tmp:
            staging = Path(tmp)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            members = [MANIFEST]
            keyring = sysroot.path / "ostree/repo" / f"{remote}.trustedkeys.gpg"
            if keyring.exists():
                shutil.copy2(keyring, staging / "trustedkeys.gpg")
                members.append("trustedkeys.gpg")
            etc_list = staging / "etc.list"
            etc_list.write_bytes(b"".join(p.encode() + b"\0" for p in changed))
            partial = output.with_name(f".{output.name}.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            try:
                run([*_TAR, "--create", f"--file={partial}", "-C", str(staging), *members])
                run(
                    [
                        *_TAR,
                        "--append",
                        f"--file={partial}",
                        "--no-recursion",
                        "--null",
                        "-C",
                        str(root),
                        f"--files-from={etc_list}",
                    ]
                )
                excludes = [f"--exclude={e}" for e in VAR_EXCLUDES]
                run(
                    [
                        *_TAR,
                        "--append",
                        f"--file={partial}",
                        *excludes,
                        "-C",
                        str(sysroot.stateroot_var(stateroot).parent),
                        "var",
                    ]
                )
                os.chmod(partial, 0o600)
                os.rename(partial, output)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    return BackupResult(output, len(changed), len(removed), deployment.name)


def read_manifest(archive: Path) -> dict[str, Any]:
    if not archive.is_file():
        raise UsageError(f"{archive}: no such backup file")
    done = subprocess.run(["tar", "-xOf", str(archive), MANIFEST], capture_output=True)
    if done.returncode != 0:
        raise UsageError(f"{archive} is not a tether backup (no {MANIFEST} in it)")
    try:
        manifest: dict[str, Any] = json.loads(done.stdout)
    except ValueError as e:
        raise UsageError(f"{archive}: its {MANIFEST} is not JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{archive}: backup format {manifest.get('format')} is not {FORMAT}")
    return manifest


def restore(
    sysroot_path: Path,
    stateroot: str | None,
    archive: Path,
    *,
    lock_timeout: float,
    report: Report,
) -> str:
    manifest = read_manifest(archive)
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot or manifest["stateroot"])
        deployment = _current(sysroot, stateroot)
        want = manifest["origin"]["tether"]
        have = deployment.origin.get("tether", {})
        if (have.get("remote"), have.get("bundle-ref")) != (want["remote"], want["bundle-ref"]):
            raise UsageError(
                f"the backup is of bundle {want['remote']}:{want['bundle-ref']}, but {deployment.name} "
                f"runs {have.get('remote')}:{have.get('bundle-ref')}: "
                "install that bundle first (or restore --install)"
            )
        root = sysroot.deployment_dir(deployment)
        members = run(["tar", "-tf", str(archive)], capture=True).stdout.splitlines()
        if any(m.startswith("etc/") for m in members):
            run([*_TAR, "--extract", f"--file={archive}", "-C", str(root), "--wildcards", "etc/*"])
        for relative in manifest.get("etc_removed", []):
            target = root / relative
            if target.is_file() or target.is_symlink():
                target.unlink()
        var_parent = sysroot.stateroot_var(stateroot).parent
        run([*_TAR, "--extract", f"--file={archive}", "-C", str(var_parent), "--wildcards", "var/*"])
    return deployment.name


def install_from_backup(
    sysroot_path: Path,
    stateroot: str | None,
    archive: Path,
    *,
    lock_timeout: float,
    progress: bool,
    report: Report,
) -> None:
    """`restore --install`: install on an empty sysroot the bundle and remote the backup records."""
    from tether.upgrade import BundleSource, install

    manifest = read_manifest(archive)
    origin = manifest["origin"]["tether"]
    remote = manifest["remote"]
    with tempfile.TemporaryDirectory(prefix="tether-restore-") as tmp:
        keys: list[Path] = []
        if remote.get("gpg-verify"):
            done = subprocess.run(
                ["tar", "-xf", str(archive), "-C", tmp, "trustedkeys.gpg"], capture_output=True
            )
            if done.returncode != 0:
                raise UsageError(f"{archive}: the remote verified signatures but the backup has no keys")
            keys = [Path(tmp) / "trustedkeys.gpg"]
        install(
            sysroot_path,
            stateroot or manifest["stateroot"],
            remote=remote["name"],
            url=remote["url"],
            gpg_verify=bool(remote.get("gpg-verify")),
            gpg_keys=keys,
            source=BundleSource(origin["remote"], origin["bundle-ref"]),
            kargs=list(manifest.get("admin_kernel_arguments", [])),
            lock_timeout=lock_timeout,
            progress=progress,
            report=report,
        )
