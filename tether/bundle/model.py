"""The bundle model: what a `tether.toml` declares, as frozen dataclasses.

Nothing here does I/O. `tether.bundle.manifest` builds these objects from a
bundle directory and is the only place that knows TOML; everything else reads
the model. Every resource keeps the `Location` it came from so that later
checks (a timezone missing from the OS tree, an unknown owner) can still name
file, line and key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Location:
    """Where a value was declared: the file, its line (1-based) and the dotted key."""

    file: Path
    line: int | None
    key: str

    def __str__(self) -> str:
        line = f":{self.line}" if self.line is not None else ""
        return f"{self.file}{line}:{self.key}"


class FilePolicy(enum.StrEnum):
    DEFAULT = "default"  # an OS default: the admin's local edit wins (3-way merge)
    ENFORCE = "enforce"  # the bundle's content wins at deploy time; local edit saved


class UnitState(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    MASKED = "masked"


class Stage(enum.StrEnum):
    COMPOSE = "compose"  # on a copy of the tree before it is committed
    DEPLOY = "deploy"  # inside the new deployment at upgrade time
    BOOT = "boot"  # by `tether converge` at the deployment's first boot


@dataclass(frozen=True)
class Owner:
    """A user or group as written: a name, or a number."""

    name: str | None = None
    id: int | None = None

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.id)


ROOT = Owner(name="root")


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    os_ref: str
    os_commits: tuple[str, ...] = ()
    ignition: str | None = None  # path relative to the bundle directory
    max_size: int | None = None  # bytes; raises the 1 GiB bundle limit
    location: Location | None = None


@dataclass(frozen=True)
class KernelArguments:
    arguments: tuple[str, ...] = ()
    location: Location | None = None
    absent: tuple[str, ...] = ()  # must not be on the command line, even as the admin's (Ignition)


@dataclass(frozen=True)
class SystemSettings:
    locale: str | None = None
    keymap: str | None = None
    timezone: str | None = None
    hostname: str | None = None
    locations: dict[str, Location] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Sysctl:
    key: str
    value: str
    location: Location


@dataclass(frozen=True)
class File:
    """A regular file. Exactly one of `content` and `source` is set."""

    path: PurePosixPath
    content: bytes | None
    source: PurePosixPath | None  # relative to the bundle directory
    mode: int
    owner: Owner
    group: Owner
    policy: FilePolicy
    location: Location
    append: bytes | None = None  # added to the end of the OS default (Ignition's append)


@dataclass(frozen=True)
class Directory:
    path: PurePosixPath
    mode: int
    owner: Owner
    group: Owner
    location: Location


@dataclass(frozen=True)
class Link:
    path: PurePosixPath
    target: str
    location: Location


@dataclass(frozen=True)
class Unit:
    """A systemd unit, shipped by the bundle (`source`) or by the OS (no source)."""

    name: str
    source: PurePosixPath | None
    state: UnitState | None  # None: leave the enablement as the OS has it
    dropins: tuple[tuple[str, PurePosixPath], ...]  # (file name, source), declared order
    location: Location
    content: bytes | None = None  # the unit file given inline (Ignition) instead of a source
    dropin_contents: tuple[tuple[str, bytes], ...] = ()  # inline drop-ins (Ignition)


@dataclass(frozen=True)
class Swap:
    file: PurePosixPath | None
    device: str | None
    size: int | None  # bytes
    priority: int | None
    location: Location


@dataclass(frozen=True)
class User:
    name: str
    uid: int | None
    groups: tuple[str, ...]
    home: PurePosixPath | None
    shell: PurePosixPath | None
    ssh_authorized_keys: tuple[str, ...]
    password_hash: str | None
    location: Location


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None
    location: Location


@dataclass(frozen=True)
class Mount:
    what: str
    where: PurePosixPath
    type: str
    options: tuple[str, ...]
    location: Location


@dataclass(frozen=True)
class Hook:
    stage: Stage
    run: PurePosixPath  # relative to the bundle directory
    timeout: float  # seconds
    network: bool
    location: Location


@dataclass(frozen=True)
class Playbook:
    playbook: PurePosixPath  # relative to the bundle directory
    stage: Stage  # deploy or boot
    extra_vars: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    network: bool
    location: Location


@dataclass(frozen=True)
class Bundle:
    """A parsed, validated bundle. `root` is the directory its sources are read from."""

    root: Path
    manifest: Path
    info: BundleInfo
    kernel: KernelArguments = KernelArguments()
    system: SystemSettings = SystemSettings()
    sysctl: tuple[Sysctl, ...] = ()
    files: tuple[File, ...] = ()
    directories: tuple[Directory, ...] = ()
    links: tuple[Link, ...] = ()
    units: tuple[Unit, ...] = ()
    swap: Swap | None = None
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    playbooks: tuple[Playbook, ...] = ()

    def hooks_for(self, stage: Stage) -> tuple[Hook, ...]:
        return tuple(h for h in self.hooks if h.stage == stage)
