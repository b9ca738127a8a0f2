"""Where tree-level content is decided: a bundle becomes a list of tree edits.

Everything the drift rule keeps in the composed commit is planned here: files,
directories and links under /etc (as /usr/etc defaults) and /usr, units with
their drop-ins and enablement, locale, keymap, timezone, hostname and sysctl.
The planner is pure: it reads the OS tree through the small `OsTree` protocol
and bundle sources through a callable, and returns edits that the libostree
edge applies to a MutableTree. Because every composition starts again from the
pristine OS commit, a resource removed from the bundle simply is not planned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tether.accounts import sysusers_conf
from tether.bundle.model import (
    Bundle,
    File,
    FilePolicy,
    Location,
    Owner,
    Unit,
    UnitState,
)
from tether.errors import ManifestError

BUNDLE_COPY = PurePosixPath("usr/share/tether/bundle")
UNIT_DIR = PurePosixPath("usr/lib/systemd/system")
ETC_UNIT_DIR = PurePosixPath("usr/etc/systemd/system")


@dataclass(frozen=True)
class TreeFile:
    path: PurePosixPath  # relative to the tree root
    content: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class TreeDir:
    path: PurePosixPath
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class TreeSymlink:
    path: PurePosixPath
    target: str


@dataclass(frozen=True)
class TreeRemove:
    path: PurePosixPath


@dataclass(frozen=True)
class TreeSubtree:
    """A whole directory taken from another commit's tree by checksum."""

    path: PurePosixPath
    dirtree: str
    dirmeta: str


TreeEdit = TreeFile | TreeDir | TreeSymlink | TreeRemove | TreeSubtree


class OsTree(Protocol):
    """What the planner may ask of the OS commit's tree."""

    def kind(self, path: PurePosixPath | str) -> str | None: ...

    def read(self, path: PurePosixPath | str) -> bytes | None: ...

    def readlink(self, path: PurePosixPath | str) -> str | None: ...

    def listdir(self, path: PurePosixPath | str) -> list[str]: ...


SourceReader = Callable[[PurePosixPath], bytes]


def _unsupported(location: Location | None, what: str) -> ManifestError:
    where = location or Location(Path("tether.toml"), None, "")
    return ManifestError(
        where.file, where.line, where.key, f"{what} is not supported by this version of tether"
    )


def check_supported(bundle: Bundle) -> None:
    """Refuse what this version cannot apply yet rather than ignore it silently."""
    for f in bundle.files:
        if f.policy is FilePolicy.ENFORCE and not f.path.is_relative_to("/etc"):
            raise ManifestError(
                f.location.file,
                f.location.line,
                f"{f.location.key}.policy",
                'policy = "enforce" is for files in /etc',
            )


def tree_path(path: PurePosixPath) -> PurePosixPath:
    """Where a target path lives in the tree: /etc defaults are shipped as /usr/etc."""
    relative = path.relative_to("/")
    if relative.parts[:1] == ("etc",):
        return PurePosixPath("usr", *relative.parts)
    return relative


class _Accounts:
    """Owner names resolved against the OS tree's passwd/group files."""

    def __init__(self, tree: OsTree, bundle: Bundle) -> None:
        self.users = self._load(tree, ("usr/etc/passwd", "usr/lib/passwd"))
        self.groups = self._load(tree, ("usr/etc/group", "usr/lib/group"))
        # the bundle's own accounts, where it gives their ids
        self.users.update({u.name: u.uid for u in bundle.users if u.uid is not None})
        self.groups.update({g.name: g.gid for g in bundle.groups if g.gid is not None})

    @staticmethod
    def _load(tree: OsTree, paths: tuple[str, ...]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for path in paths:
            for line in (tree.read(path) or b"").decode("utf-8", "replace").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[2].isdigit():
                    ids.setdefault(fields[0], int(fields[2]))
        return ids

    def resolve(self, owner: Owner, table: dict[str, int], what: str, location: Location, key: str) -> int:
        if owner.id is not None:
            return owner.id
        assert owner.name is not None
        if owner.name not in table:
            raise ManifestError(
                location.file,
                location.line,
                f"{location.key}.{key}",
                f"unknown {what} '{owner.name}' in the OS tree",
            )
        return table[owner.name]

    def uid(self, owner: Owner, location: Location) -> int:
        return self.resolve(owner, self.users, "user", location, "owner")

    def gid(self, group: Owner, location: Location) -> int:
        return self.resolve(group, self.groups, "group", location, "group")


def _in_tree(path: PurePosixPath) -> bool:
    # /var is machine state, shared by deployments: made by converge at boot, not composed
    return not path.is_relative_to("/var")


def _files(
    bundle: Bundle, accounts: _Accounts, read_source: SourceReader, tree: OsTree
) -> Iterator[TreeEdit]:
    for d in bundle.directories:
        if _in_tree(d.path):
            uid, gid = accounts.uid(d.owner, d.location), accounts.gid(d.group, d.location)
            yield TreeDir(tree_path(d.path), d.mode, uid, gid)
    for f in bundle.files:
        if _in_tree(f.path):
            yield _file(f, accounts, read_source, tree)
    for link in bundle.links:
        if _in_tree(link.path):
            yield TreeSymlink(tree_path(link.path), link.target)


def unit_name_for_path(path: str, suffix: str) -> str:
    """`systemd-escape --path --suffix=SUFFIX PATH`."""
    escaped = []
    for i, char in enumerate(path.strip("/")):
        if char == "/":
            escaped.append("-")
        elif char.isalnum() or char in ":_" or (char == "." and i > 0):
            escaped.append(char)
        else:
            escaped.append("".join(f"\\x{b:02x}" for b in char.encode()))
    return "".join(escaped) + "." + suffix


def _swap(bundle: Bundle) -> Iterator[TreeEdit]:
    """A swap unit in the tree activates the swap file converge makes (or the partition)."""
    swap = bundle.swap
    if swap is None:
        return
    what = str(swap.file) if swap.file is not None else str(swap.device)
    if what.startswith("LABEL="):
        what = f"/dev/disk/by-label/{what.removeprefix('LABEL=')}"
    elif what.startswith("UUID="):
        what = f"/dev/disk/by-uuid/{what.removeprefix('UUID=')}"
    name = unit_name_for_path(what, "swap")
    body = f"# managed by tether: bundle {bundle.info.name}\n"
    body += f"[Unit]\nDescription=Swap declared by bundle {bundle.info.name}\n"
    if swap.file is not None:
        body += "After=tether-converge.service\n"
    body += f"\n[Swap]\nWhat={what}\n"
    if swap.priority is not None:
        body += f"Priority={swap.priority}\n"
    yield TreeFile(UNIT_DIR / name, body.encode())
    yield TreeSymlink(UNIT_DIR / "swap.target.wants" / name, f"../{name}")


def _file(f: File, accounts: _Accounts, read_source: SourceReader, tree: OsTree) -> TreeFile:
    if f.content is not None:
        content = f.content
    elif f.source is not None:
        content = read_source(f.source)
    else:
        # only appended to: what the OS ships, then the addition
        content = tree.read(tree_path(f.path)) or b""
    if f.append is not None:
        content += f.append
    return TreeFile(
        tree_path(f.path),
        content,
        f.mode,
        accounts.uid(f.owner, f.location),
        accounts.gid(f.group, f.location),
    )


def _install_section(text: str) -> dict[str, list[str]]:
    """The [Install] keys of a unit file (systemd syntax is close enough to INI for these)."""
    install: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Install" and "=" in line:
            key, _, value = line.partition("=")
            install.setdefault(key.strip(), []).extend(value.split())
    return install


def _unit_file_name(name: str) -> str:
    """`getty@tty1.service` is provided by the template `getty@.service`."""
    stem, _, suffix = name.rpartition(".")
    if "@" in stem and not stem.endswith("@"):
        return f"{stem.partition('@')[0]}@.{suffix}"
    return name


def _units(bundle: Bundle, tree: OsTree, read_source: SourceReader) -> Iterator[TreeEdit]:
    for unit in bundle.units:
        yield from unit_edits(unit, tree, read_source)


def unit_edits(unit: Unit, tree: OsTree, read_source: SourceReader) -> Iterator[TreeEdit]:
    """A unit file, its drop-ins and the links that give it its declared enablement."""
    file_name = _unit_file_name(unit.name)
    if unit.content is not None:
        text = unit.content
        yield TreeFile(UNIT_DIR / file_name, text)
    elif unit.source is not None:
        text = read_source(unit.source)
        yield TreeFile(UNIT_DIR / file_name, text)
    else:
        found = next(
            (
                tree.read(d / file_name)
                for d in (UNIT_DIR, ETC_UNIT_DIR)
                if tree.kind(d / file_name) == "file"
            ),
            None,
        )
        if found is None:
            raise ManifestError(
                unit.location.file,
                unit.location.line,
                f"{unit.location.key}.name",
                f"unit {unit.name} has no source and the OS tree does not ship it",
            )
        text = found
    for dropin, source in unit.dropins:
        yield TreeFile(UNIT_DIR / f"{unit.name}.d" / dropin, read_source(source))
    for dropin, content in unit.dropin_contents:
        yield TreeFile(UNIT_DIR / f"{unit.name}.d" / dropin, content)

    if unit.state is None:
        return
    # start from no enablement at all, then add what the declared state needs
    for directory in tree.listdir(ETC_UNIT_DIR):
        if directory.endswith((".wants", ".requires")) and unit.name in tree.listdir(
            ETC_UNIT_DIR / directory
        ):
            yield TreeRemove(ETC_UNIT_DIR / directory / unit.name)
    if tree.readlink(ETC_UNIT_DIR / unit.name) is not None:
        yield TreeRemove(ETC_UNIT_DIR / unit.name)

    unit_path = f"/usr/lib/systemd/system/{file_name}"
    if unit.state is UnitState.MASKED:
        yield TreeSymlink(ETC_UNIT_DIR / unit.name, "/dev/null")
    elif unit.state is UnitState.ENABLED:
        install = _install_section(text.decode("utf-8", "replace"))
        wanted = [(t, "wants") for t in install.get("WantedBy", [])]
        wanted += [(t, "requires") for t in install.get("RequiredBy", [])]
        aliases = install.get("Alias", [])
        if not wanted and not aliases:
            raise ManifestError(
                unit.location.file,
                unit.location.line,
                f"{unit.location.key}.enabled",
                f"unit {unit.name} has no WantedBy=, RequiredBy= or Alias= in [Install]: "
                "it cannot be enabled",
            )
        for target, kind in wanted:
            yield TreeSymlink(ETC_UNIT_DIR / f"{target}.{kind}" / unit.name, unit_path)
        for alias in aliases:
            yield TreeSymlink(ETC_UNIT_DIR / alias, unit_path)


def _system(bundle: Bundle, tree: OsTree) -> Iterator[TreeEdit]:
    system = bundle.system
    if system.locale is not None:
        yield TreeFile(PurePosixPath("usr/etc/locale.conf"), f"LANG={system.locale}\n".encode())
        if tree.kind("usr/etc/default/locale") == "file":  # Debian reads this one
            yield TreeFile(PurePosixPath("usr/etc/default/locale"), f"LANG={system.locale}\n".encode())
    if system.keymap is not None:
        yield TreeFile(PurePosixPath("usr/etc/vconsole.conf"), f"KEYMAP={system.keymap}\n".encode())
    if system.timezone is not None:
        zone = PurePosixPath("usr/share/zoneinfo") / system.timezone
        if tree.kind(zone) not in ("file", "symlink"):
            where = system.locations.get("timezone") or bundle.info.location
            assert where is not None
            raise ManifestError(
                where.file,
                where.line,
                "system.timezone",
                f"timezone {system.timezone} is not in the OS tree (/{zone})",
            )
        yield TreeSymlink(PurePosixPath("usr/etc/localtime"), f"../usr/share/zoneinfo/{system.timezone}")
        if tree.kind("usr/etc/timezone") == "file":  # Debian keeps the name here too
            yield TreeFile(PurePosixPath("usr/etc/timezone"), f"{system.timezone}\n".encode())
    if system.hostname is not None:
        yield TreeFile(PurePosixPath("usr/etc/hostname"), f"{system.hostname}\n".encode())
    if bundle.sysctl:
        lines = [f"# managed by tether: bundle {bundle.info.name}\n"]
        lines += [f"{s.key} = {s.value}\n" for s in bundle.sysctl]
        yield TreeFile(
            PurePosixPath(f"usr/lib/sysctl.d/90-tether-{bundle.info.name}.conf"), "".join(lines).encode()
        )


def plan_tree(bundle: Bundle, tree: OsTree, read_source: SourceReader) -> list[TreeEdit]:
    """The edits that turn the OS tree into the composed tree (the bundle copy excepted)."""
    check_supported(bundle)
    accounts = _Accounts(tree, bundle)
    edits: list[TreeEdit] = []
    edits += _files(bundle, accounts, read_source, tree)
    edits += _units(bundle, tree, read_source)
    edits += _system(bundle, tree)
    edits += _swap(bundle)
    if bundle.users or bundle.groups:
        conf = PurePosixPath(f"usr/lib/sysusers.d/tether-{bundle.info.name}.conf")
        edits.append(TreeFile(conf, sysusers_conf(bundle).encode()))
    return edits
