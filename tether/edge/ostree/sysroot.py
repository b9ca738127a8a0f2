"""Sysroots: load and lock, deployments, deploy without touching the boot list, the boot list."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib

from tether.edge.ostree.binding import OSTree, _glib_errors, _stdout_to_log
from tether.edge.ostree.repo import Repo
from tether.errors import LockTimeoutError, UsageError


@dataclass(frozen=True)
class Deployment:
    """One deployment as tether reports and manipulates it."""

    stateroot: str
    checksum: str
    serial: int
    index: int
    booted: bool
    staged: bool
    pinned: bool
    kernel_arguments: tuple[str, ...]
    origin: dict[str, dict[str, str]]
    handle: Any = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.checksum}.{self.serial}"

    def origin_value(self, group: str, key: str) -> str | None:
        return self.origin.get(group, {}).get(key)


def _keyfile_to_dict(keyfile: Any) -> dict[str, dict[str, str]]:
    if keyfile is None:
        return {}
    groups, _ = keyfile.get_groups()
    result: dict[str, dict[str, str]] = {}
    for group in groups:
        keys, _ = keyfile.get_keys(group)
        result[group] = {key: keyfile.get_string(group, key) for key in keys}
    return result


def split_kargs(options: str) -> tuple[str, ...]:
    return tuple(word for word in options.split() if not word.startswith("ostree="))


# ioctl numbers for the inode flags (linux/fs.h): ostree makes deployment roots immutable
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10


def clear_immutable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        flags = bytearray(4)
        try:
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        except OSError:
            return  # the file system has no inode flags
        value = int.from_bytes(flags, sys.byteorder)
        if value & _FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (value & ~_FS_IMMUTABLE_FL).to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)


class Sysroot:
    """An ostree sysroot: `/` on a booted system, or an offline directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(path)))
        self._locked = False

    @classmethod
    def initialize(cls, path: Path, stateroot: str) -> Sysroot:
        """`ostree admin init-fs` + `os-init`: idempotent."""
        path.mkdir(parents=True, exist_ok=True)
        sysroot = cls(path)
        with _glib_errors(f"initialising sysroot {path}"):
            sysroot._sysroot.ensure_initialized(None)
            sysroot._sysroot.load(None)
            sysroot._sysroot.init_osname(stateroot, None)
        for name in ("dev", "proc", "run", "sys", "tmp", "home", "root"):
            (path / name).mkdir(exist_ok=True)
        return sysroot

    def is_initialized(self) -> bool:
        return (self.path / "ostree" / "repo" / "config").exists()

    def load(self) -> None:
        if not self.is_initialized():
            raise UsageError(f"{self.path} is not an ostree sysroot (no ostree/repo); use 'tether install'")
        with _glib_errors(f"loading sysroot {self.path}"):
            self._sysroot.load(None)

    def reload(self) -> None:
        with _glib_errors(f"reloading sysroot {self.path}"):
            self._sysroot.load_if_changed(None)

    def lock(self, timeout: float, on_wait: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        warned = False
        while True:
            with _glib_errors("taking the sysroot lock"):
                _, acquired = self._sysroot.try_lock()
            if acquired:
                self._locked = True
                return
            if not warned and on_wait is not None:
                on_wait()
                warned = True
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"another operation holds the lock of sysroot {self.path} (waited {timeout:g} s)"
                )
            time.sleep(0.2)

    def unlock(self) -> None:
        if self._locked:
            self._sysroot.unlock()
            self._locked = False

    @property
    def repo(self) -> Repo:
        return Repo(self.path / "ostree" / "repo", self._sysroot.repo())

    def stateroots(self) -> list[str]:
        deploy = self.path / "ostree" / "deploy"
        return sorted(p.name for p in deploy.iterdir() if p.is_dir()) if deploy.exists() else []

    def stateroot_var(self, stateroot: str) -> Path:
        return self.path / "ostree" / "deploy" / stateroot / "var"

    def _wrap(self, handle: Any, booted_handle: Any) -> Deployment:
        bootconfig = handle.get_bootconfig()
        options = bootconfig.get("options") if bootconfig is not None else None
        return Deployment(
            stateroot=str(handle.get_osname()),
            checksum=str(handle.get_csum()),
            serial=int(handle.get_deployserial()),
            index=int(handle.get_index()),
            booted=booted_handle is not None and bool(handle.equal(booted_handle)),
            staged=bool(handle.is_staged()),
            pinned=bool(handle.is_pinned()),
            kernel_arguments=split_kargs(options or ""),
            origin=_keyfile_to_dict(handle.get_origin()),
            handle=handle,
        )

    def deployments(self) -> list[Deployment]:
        booted = self._sysroot.get_booted_deployment()
        return [self._wrap(d, booted) for d in self._sysroot.get_deployments()]

    def booted(self) -> Deployment | None:
        booted = self._sysroot.get_booted_deployment()
        return self._wrap(booted, booted) if booted is not None else None

    def staged(self) -> Deployment | None:
        staged = self._sysroot.get_staged_deployment()
        return self._wrap(staged, None) if staged is not None else None

    def merge_deployment(self, stateroot: str) -> Deployment | None:
        handle = self._sysroot.get_merge_deployment(stateroot)
        if handle is None:
            return None
        return self._wrap(handle, self._sysroot.get_booted_deployment())

    def deployment_dir(self, deployment: Deployment) -> Path:
        return self.path / str(self._sysroot.get_deployment_dirpath(deployment.handle))

    def deploy_tree(
        self,
        stateroot: str,
        checksum: str,
        *,
        origin: Mapping[str, Mapping[str, str]],
        merge: Deployment | None,
        kernel_arguments: Iterable[str],
    ) -> Deployment:
        """Check out, merge /etc and write the origin; the boot list is not touched."""
        self.repo.verify_metadata(checksum)  # checkout trusts what it reads
        keyfile = GLib.KeyFile.new()
        for group, values in origin.items():
            for key, value in values.items():
                keyfile.set_string(group, key, value)
        with _glib_errors(f"deploying {checksum}"):
            _, handle = self._sysroot.deploy_tree(
                stateroot, checksum, keyfile, merge.handle if merge else None, list(kernel_arguments), None
            )
        return self._wrap(handle, self._sysroot.get_booted_deployment())

    def discard(self, deployment: Deployment) -> bool:
        """Remove a deployment that was never written to the deployment list.

        One that is in the list (the failure came after the switch) is kept, and
        so is one when the list cannot be read: an unreferenced directory is
        removed by the next run, a referenced one would not boot. True if removed.
        """
        try:
            self._sysroot.load(None)
        except GLib.Error:
            return False
        if any(d.stateroot == deployment.stateroot and d.name == deployment.name for d in self.deployments()):
            return False
        directory = self.deployment_dir(deployment)
        if directory.exists():
            clear_immutable(directory)
            shutil.rmtree(directory)
        origin = directory.with_name(directory.name + ".origin")
        origin.unlink(missing_ok=True)
        return True

    def write_deployments(self, deployments: list[Deployment]) -> None:
        with _glib_errors("writing the deployment list"), _stdout_to_log("cleanup"):
            self._sysroot.write_deployments([d.handle for d in deployments], None)
        self.reload()

    def write_origin(self, deployment: Deployment, origin: Mapping[str, Mapping[str, str]]) -> None:
        keyfile = GLib.KeyFile.new()
        for group, values in origin.items():
            for key, value in values.items():
                keyfile.set_string(group, key, value)
        with _glib_errors(f"writing the origin of {deployment.name}"):
            self._sysroot.write_origin_file(deployment.handle, keyfile, None)

    def set_pinned(self, deployment: Deployment, pinned: bool) -> None:
        with _glib_errors(f"pinning {deployment.name}"):
            self._sysroot.deployment_set_pinned(deployment.handle, pinned)

    def cleanup(self) -> None:
        with _glib_errors("cleaning up the sysroot"), _stdout_to_log("cleanup"):
            self._sysroot.cleanup(None)


def deployment_root(sysroot_path: Path, deployment: Deployment) -> Path:
    return sysroot_path / "ostree" / "deploy" / deployment.stateroot / "deploy" / deployment.name
