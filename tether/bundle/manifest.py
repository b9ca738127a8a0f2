"""The bundle manifest: reading `tether.toml` into a validated `Bundle`.

This module owns the manifest's schema: which tables and keys exist, their
types and defaults, and the checks that span resources (one declaration per
path, unit, user, group and mount point). Bad input raises `ManifestError`
naming the file, line and dotted key, e.g. `tether.toml:14:file[2].mode`. Array
indices in keys, and in the key of each resource's `Location`, count from 0 in
declaration order: `file[0]` is the first `[[file]]`. A resource's location is
the line of its own `[[...]]` header (or of its element in an inline array); a
missing key is reported at the line of its table. The shapes of single values
are in `tether.bundle.values`, line finding in `tether.bundle.locate`, and
everything that touches the bundle's files in `tether.bundle.paths`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from tether.bundle import values
from tether.bundle.ignition import load_ignition
from tether.bundle.locate import KeyPath, format_key, key_lines, line_of
from tether.bundle.model import (
    ROOT,
    Bundle,
    BundleInfo,
    Directory,
    File,
    FilePolicy,
    Group,
    Hook,
    KernelArguments,
    Link,
    Location,
    Mount,
    Playbook,
    Stage,
    Swap,
    Sysctl,
    SystemSettings,
    Unit,
    User,
)
from tether.bundle.paths import MAX_BUNDLE_SIZE, check_source, read_confined, relative_path, scan_bundle
from tether.bundle.values import parse_duration, parse_mode, parse_size
from tether.errors import ManifestError

__all__ = ["MANIFEST_NAME", "load_bundle", "parse_duration", "parse_mode", "parse_size", "read_source"]

MANIFEST_NAME = "tether.toml"

T = TypeVar("T")
K = TypeVar("K")

_DEFAULT_TIMEOUT = 600.0

_bundle_name = values.matching(r"[a-z0-9][a-z0-9._-]*", "bundle name")
_version = values.matching(r"[A-Za-z0-9][A-Za-z0-9._+~-]*", "version")
_ref = values.matching(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*", "ref")
_checksum = values.matching(r"[0-9a-f]{64}", "commit checksum")
_locale = values.matching(r"[A-Za-z]+(_[A-Za-z0-9]+)?(\.[A-Za-z0-9-]+)?(@[A-Za-z0-9]+)?", "locale")
_keymap = values.matching(r"[A-Za-z0-9][A-Za-z0-9._-]*", "keymap")
# Area/City; no dots, so never `..`.
_timezone = values.matching(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", "timezone")
_fstype = values.matching(r"[a-z0-9][a-z0-9._+-]*", "file system type")


def read_source(bundle: Bundle, source: PurePosixPath) -> bytes:
    """The content of a bundle source, read without leaving the bundle directory."""
    return read_confined(bundle.root, source)


def load_bundle(directory: Path) -> Bundle:
    manifest = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(directory, None, None, "is not a directory")
    root = directory.resolve()
    raw = read_confined(root, PurePosixPath(MANIFEST_NAME))
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ManifestError(manifest, line, None, f"not UTF-8 text (byte {raw[error.start]:#04x})") from None
    try:
        document = tomllib.loads(text)
        lines = key_lines(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(manifest, text, str(error)) from None
    except RecursionError:
        raise ManifestError(manifest, None, None, "invalid TOML: values are nested too deeply") from None
    context = _Context(manifest, root, lines)
    bundle = _bundle(context, _Table(context, (), document))
    scan_bundle(root, bundle.info.max_size or MAX_BUNDLE_SIZE)
    if bundle.info.ignition is not None:
        bundle = _with_ignition(bundle, PurePosixPath(bundle.info.ignition))
    return bundle


def _with_ignition(bundle: Bundle, config: PurePosixPath) -> Bundle:
    """The manifest's resources plus those of its Ignition config; the same path twice is an error."""
    shown = Path(bundle.manifest).parent / config
    raw = read_confined(bundle.root, config)
    try:
        text = raw.decode()
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ManifestError(shown, line, None, "not UTF-8 text") from None

    def source(relative: PurePosixPath, location: Location) -> bytes:
        try:
            return read_confined(bundle.root, relative)
        except ManifestError as error:
            raise ManifestError(location.file, location.line, location.key, error.message) from None

    found = load_ignition(shown, text, source)
    seen: dict[str, Location] = {}
    resources: list[File | Directory | Link] = [*bundle.files, *bundle.directories, *bundle.links]
    resources += [*found.files, *found.directories, *found.links]
    for resource in resources:
        key = str(resource.path)
        if key in seen:
            where = resource.location
            raise ManifestError(where.file, where.line, where.key, f"{key} is also declared at {seen[key]}")
        seen[key] = resource.location
    for names, what in (
        ([u.name for u in (*bundle.units, *found.units)], "unit"),
        ([u.name for u in (*bundle.users, *found.users)], "user"),
        ([g.name for g in (*bundle.groups, *found.groups)], "group"),
    ):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ManifestError(
                shown, None, None, f"{what} {duplicates[0]} is declared twice (manifest and Ignition)"
            )
    kargs = tuple(dict.fromkeys((*bundle.kernel.arguments, *found.kargs)))
    return dataclasses.replace(
        bundle,
        kernel=dataclasses.replace(bundle.kernel, arguments=kargs, absent=tuple(found.kargs_absent)),
        files=(*bundle.files, *found.files),
        directories=(*bundle.directories, *found.directories),
        links=(*bundle.links, *found.links),
        units=(*bundle.units, *found.units),
        users=(*bundle.users, *found.users),
        groups=(*bundle.groups, *found.groups),
    )


def _syntax_error(manifest: Path, text: str, message: str) -> ManifestError:
    # tomllib puts the position at the end of its message; we keep it as file:line.
    match = re.fullmatch(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", message, re.DOTALL)
    if match is None:
        return ManifestError(manifest, None, None, f"invalid TOML: {message}")
    reason = match[1][:1].lower() + match[1][1:]
    if match[2] is None:
        last_line = text.rstrip().count("\n") + 1
        return ManifestError(manifest, last_line, None, f"invalid TOML: {reason} (at end of file)")
    return ManifestError(manifest, int(match[2]), None, f"invalid TOML: {reason} (column {match[3]})")


@dataclass(frozen=True)
class _Context:
    manifest: Path
    root: Path
    lines: dict[KeyPath, int]

    def location(self, path: KeyPath) -> Location:
        return Location(self.manifest, line_of(self.lines, path), format_key(path))

    def error(self, path: KeyPath, message: str) -> ManifestError:
        return ManifestError(self.manifest, line_of(self.lines, path), format_key(path), message)

    def source(self, value: object) -> PurePosixPath:
        path = relative_path(values.string(value))
        check_source(self.root, path)
        return path


class _Table:
    """One TOML table being read; keys that no reader asked for are unknown."""

    def __init__(self, context: _Context, path: KeyPath, data: dict[str, object]) -> None:
        self.context = context
        self.path = path
        self.data = data
        self.known: set[str] = set()

    def location(self) -> Location:
        return self.context.location(self.path)

    def error(self, key: str | None, message: str) -> ManifestError:
        return self.context.error(self.path if key is None else (*self.path, key), message)

    def required(self, key: str, convert: Callable[[object], T]) -> T:
        self.known.add(key)
        if key not in self.data:
            raise self.error(key, "required key is missing")
        return self._convert(key, convert)

    def optional(self, key: str, convert: Callable[[object], T]) -> T | None:
        self.known.add(key)
        return self._convert(key, convert) if key in self.data else None

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        self.known.add(key)
        return self._convert(key, convert) if key in self.data else default

    def _convert(self, key: str, convert: Callable[[object], T]) -> T:
        try:
            return convert(self.data[key])
        except values.InvalidElement as error:
            raise self.context.error((*self.path, key, *error.within), str(error)) from None
        except ValueError as error:
            raise self.error(key, str(error)) from None

    def table(self, key: str) -> _Table | None:
        self.known.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            hint = f" ([{key}])" if not self.path else ""
            raise self.error(key, f"expected a table{hint}, got {values.type_name(value)}")
        return _Table(self.context, (*self.path, key), value)

    def tables(self, key: str) -> list[_Table]:
        self.known.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {values.type_name(value)}")
        tables = []
        for index, item in enumerate(value):
            path = (*self.path, key, index)
            if not isinstance(item, dict):
                raise self.context.error(path, f"expected a table, got {values.type_name(item)}")
            tables.append(_Table(self.context, path, item))
        return tables

    def entries(
        self, convert_key: Callable[[str], K], convert_value: Callable[[object], T]
    ) -> list[tuple[K, T, KeyPath]]:
        """The pairs of a table whose keys are data: drop-in names, variables."""
        pairs = []
        for key, value in self.data.items():
            self.known.add(key)
            path = (*self.path, key)
            try:
                pairs.append((convert_key(key), convert_value(value), path))
            except ValueError as error:
                raise self.context.error(path, str(error)) from None
        return pairs

    def finish(self) -> None:
        for key, value in self.data.items():
            if key not in self.known:
                close = difflib.get_close_matches(key, sorted(self.known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                is_table = isinstance(value, dict) or (
                    isinstance(value, list) and value and isinstance(value[0], dict)
                )
                kind = "table" if is_table and not self.path else "key"
                raise self.error(key, f"unknown {kind}{hint}")


# Sections. Each reader takes every key first, so an unknown key (often a
# misspelt one) is reported before the checks that combine keys.


def _bundle(context: _Context, top: _Table) -> Bundle:
    header = top.table("bundle")
    if header is None:
        raise context.error(("bundle",), "required table [bundle] is missing")
    kernel = top.table("kernel")
    system = top.table("system")
    sysctl = top.table("sysctl")
    swap = top.table("swap")
    bundle = Bundle(
        root=context.root,
        manifest=context.manifest,
        info=_bundle_info(header),
        kernel=_kernel(kernel) if kernel else KernelArguments(),
        system=_system(system) if system else SystemSettings(),
        sysctl=_sysctl(sysctl) if sysctl else (),
        files=tuple(_file(table) for table in top.tables("file")),
        directories=tuple(_directory(table) for table in top.tables("directory")),
        links=tuple(_link(table) for table in top.tables("link")),
        units=tuple(_unit(table) for table in top.tables("unit")),
        swap=_swap(swap) if swap else None,
        users=tuple(_user(table) for table in top.tables("user")),
        groups=tuple(_group(table) for table in top.tables("group")),
        mounts=tuple(_mount(table) for table in top.tables("mount")),
        hooks=tuple(_hook(table) for table in top.tables("hook")),
        playbooks=tuple(_playbook(table) for table in top.tables("ansible")),
    )
    top.finish()
    _check_paths(context, bundle)
    _check_unique(context, "unit", "name", "unit", [unit.name for unit in bundle.units])
    _check_unique(context, "user", "name", "user", [user.name for user in bundle.users])
    _check_unique(context, "user", "uid", "uid", [user.uid for user in bundle.users])
    _check_unique(context, "group", "name", "group", [group.name for group in bundle.groups])
    _check_unique(context, "group", "gid", "gid", [group.gid for group in bundle.groups])
    _check_unique(context, "mount", "where", "mount point", [mount.where for mount in bundle.mounts])
    return bundle


def _bundle_info(table: _Table) -> BundleInfo:
    ignition = table.optional("ignition", table.context.source)
    info = BundleInfo(
        name=table.required("name", _bundle_name),
        version=table.required("version", _version),
        os_ref=table.required("os-ref", _ref),
        os_commits=table.get("os-commits", values.array(_checksum, unique=True), ()),
        ignition=str(ignition) if ignition is not None else None,
        max_size=table.optional("max-size", values.positive_size),
        location=table.location(),
    )
    table.finish()
    return info


def _kernel(table: _Table) -> KernelArguments:
    kernel = KernelArguments(
        arguments=table.get("arguments", values.array(values.karg, unique=True), ()),
        location=table.context.location((*table.path, "arguments")),
    )
    table.finish()
    return kernel


def _system(table: _Table) -> SystemSettings:
    system = SystemSettings(
        locale=table.optional("locale", _locale),
        keymap=table.optional("keymap", _keymap),
        timezone=table.optional("timezone", _timezone),
        hostname=table.optional("hostname", values.hostname),
        locations={
            key: table.context.location((*table.path, key))
            for key in ("locale", "keymap", "timezone", "hostname")
            if key in table.data
        },
    )
    table.finish()
    return system


def _sysctl(table: _Table) -> tuple[Sysctl, ...]:
    context = table.context
    settings: list[Sysctl] = []
    seen: dict[str, KeyPath] = {}
    for name, value, path in _sysctl_entries(table.data, table.path):
        try:
            setting = Sysctl(values.sysctl_key(name), values.single_line(value), context.location(path))
        except ValueError as error:
            raise context.error(path, str(error)) from None
        # sysctl.d reads / and . alike.
        first = seen.setdefault(name.replace("/", "."), path)
        if first != path:
            raise context.error(path, f"sysctl {name} is already set at {_where(context, first)}")
        settings.append(setting)
    return tuple(settings)


def _sysctl_entries(data: dict[str, object], path: KeyPath) -> Iterator[tuple[str, object, KeyPath]]:
    # `vm.swappiness = "10"` without quotes is a dotted TOML key, which tomllib
    # reads as nested tables; joining the parts back accepts both spellings.
    # Iterative, as a dotted key can be nested as deep as the file is long.
    pending = [(iter(data.items()), path)]
    while pending:
        items, base = pending[-1]
        entry = next(items, None)
        if entry is None:
            pending.pop()
        elif isinstance(entry[1], dict):
            pending.append((iter(entry[1].items()), (*base, entry[0])))
        else:
            key_path = (*base, entry[0])
            yield ".".join(str(part) for part in key_path[len(path) :]), entry[1], key_path


def _file(table: _Table) -> File:
    path = table.required("path", values.tree_path)
    content = table.optional("content", values.text)
    source = table.optional("source", table.context.source)
    mode = table.get("mode", values.mode, 0o644)
    owner = table.get("owner", values.owner, ROOT)
    group = table.get("group", values.owner, ROOT)
    policy = table.get("policy", values.choice(FilePolicy), FilePolicy.DEFAULT)
    table.finish()
    if content is not None and source is not None:
        raise table.error("source", "content and source are exclusive; keep one")
    if content is None and source is None:
        raise table.error(None, "a file needs content or source")
    return File(
        path=path,
        content=content.encode() if content is not None else None,
        source=source,
        mode=mode,
        owner=owner,
        group=group,
        policy=policy,
        location=table.location(),
    )


def _directory(table: _Table) -> Directory:
    directory = Directory(
        path=table.required("path", values.tree_path),
        mode=table.get("mode", values.mode, 0o755),
        owner=table.get("owner", values.owner, ROOT),
        group=table.get("group", values.owner, ROOT),
        location=table.location(),
    )
    table.finish()
    return directory


def _link(table: _Table) -> Link:
    link = Link(
        path=table.required("path", values.tree_path),
        target=table.required("target", values.link_target),
        location=table.location(),
    )
    table.finish()
    return link


def _unit(table: _Table) -> Unit:
    name = table.required("name", values.unit_name)
    source = table.optional("source", table.context.source)
    state = table.optional("enabled", values.unit_state)
    dropin_table = table.table("dropins")
    table.finish()
    dropins = dropin_table.entries(values.dropin_name, table.context.source) if dropin_table else []
    if source is None and state is None and not dropins:
        raise table.error(None, "a unit needs source, enabled or dropins")
    return Unit(
        name=name,
        source=source,
        state=state,
        dropins=tuple((dropin, dropin_source) for dropin, dropin_source, _ in dropins),
        location=table.location(),
    )


def _swap(table: _Table) -> Swap:
    file = table.optional("file", values.var_path)
    device = table.optional("device", values.device)
    size = table.optional("size", values.positive_size)
    priority = table.optional("priority", values.integer(-1, 32767))
    table.finish()
    if file is not None and device is not None:
        raise table.error("device", "file and device are exclusive; keep one")
    if file is None and device is None:
        raise table.error(None, "swap needs file or device")
    if file is not None and size is None:
        raise table.error("size", "a swap file needs a size")
    if device is not None and size is not None:
        raise table.error("size", "size applies to a swap file, not a device")
    return Swap(file=file, device=device, size=size, priority=priority, location=table.location())


def _user(table: _Table) -> User:
    user = User(
        name=table.required("name", values.account("user name")),
        uid=table.optional("uid", values.identifier),
        groups=table.get("groups", values.array(values.account("group name"), unique=True), ()),
        home=table.optional("home", values.home),
        shell=table.optional("shell", values.absolute),
        ssh_authorized_keys=table.get("ssh-authorized-keys", values.array(values.single_line), ()),
        password_hash=table.optional("password-hash", values.password_hash),
        location=table.location(),
    )
    table.finish()
    return user


def _group(table: _Table) -> Group:
    group = Group(
        name=table.required("name", values.account("group name")),
        gid=table.optional("gid", values.identifier),
        location=table.location(),
    )
    table.finish()
    return group


def _mount(table: _Table) -> Mount:
    mount = Mount(
        what=table.required("what", values.word),
        where=table.required("where", values.absolute),
        type=table.get("type", _fstype, "auto"),
        options=table.get("options", values.array(values.option), ()),
        location=table.location(),
    )
    table.finish()
    return mount


def _hook(table: _Table) -> Hook:
    hook = Hook(
        stage=table.required("stage", values.choice(Stage)),
        run=table.required("run", table.context.source),
        timeout=table.get("timeout", values.timeout, _DEFAULT_TIMEOUT),
        network=table.get("network", values.boolean, False),
        location=table.location(),
    )
    table.finish()
    if hook.stage is Stage.COMPOSE and hook.network:
        raise table.error("network", "compose hooks run without network")
    return hook


def _playbook(table: _Table) -> Playbook:
    playbook = table.required("playbook", table.context.source)
    stage = table.get("stage", values.choice(Stage), Stage.DEPLOY)
    variables = table.table("extra-vars")
    tags: tuple[str, ...] = table.get("tags", values.array(values.option, unique=True), ())
    network = table.get("network", values.boolean, False)
    table.finish()
    if stage is Stage.COMPOSE:
        raise table.error("stage", "playbooks run at deploy or boot, not compose")
    extra_vars = variables.entries(values.variable_name, values.string) if variables else []
    return Playbook(
        playbook=playbook,
        stage=stage,
        extra_vars=tuple((name, value) for name, value, _ in extra_vars),
        tags=tags,
        network=network,
        location=table.location(),
    )


# Checks across resources. The second declaration is the error; it names the first.


def _where(context: _Context, path: KeyPath) -> str:
    return f"{format_key(path)} (line {line_of(context.lines, path)})"


def _check_unique(context: _Context, section: str, key: str, what: str, declared: list[object]) -> None:
    first: dict[object, int] = {}
    for index, value in enumerate(declared):
        if value is None:
            continue
        seen = first.setdefault(value, index)
        if seen != index:
            where = _where(context, (section, seen))
            raise context.error((section, index, key), f"{what} {value} is already declared at {where}")


def _check_paths(context: _Context, bundle: Bundle) -> None:
    declared = [
        *((resource.path, ("file", index)) for index, resource in enumerate(bundle.files)),
        *((resource.path, ("directory", index)) for index, resource in enumerate(bundle.directories)),
        *((resource.path, ("link", index)) for index, resource in enumerate(bundle.links)),
    ]
    declared.sort(key=lambda entry: line_of(context.lines, entry[1]))
    owners: dict[PurePosixPath, KeyPath] = {}
    for path, key in declared:
        first = owners.setdefault(path, key)
        if first != key:
            raise context.error((*key, "path"), f"{path} is already declared at {_where(context, first)}")
    # Nothing can be created below a file or a link.
    for path, key in declared:
        for parent in path.parents:
            parent_key = owners.get(parent)
            if parent_key is not None and parent_key[0] != "directory":
                where = _where(context, parent_key)
                raise context.error(
                    (*key, "path"), f"its parent {parent} is declared as a {parent_key[0]} at {where}"
                )
