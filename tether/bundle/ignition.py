"""Ignition (spec 3.x) as bundle input: the same resources as the native manifest.

`ignition = "config.ign"` in `[bundle]` names an Ignition config in the bundle.
What a day-2 tool can apply maps onto the model: storage.files (contents from
`data:` URLs or bundle-relative paths, append, mode, owner, overwrite as
`policy = "enforce"`), storage.directories and links, systemd.units (contents,
drop-ins, enabled, mask), passwd.users and groups, and kernelArguments
(shouldExist declared, shouldNotExist an explicit "must not exist", applied
even to an admin's karg). What needs a disk (disks, raid, filesystems, luks),
remote sources (http, https, s3, tftp, gs) and config merge/replace are errors
naming the key, never skipped. Unknown keys are errors, as in the manifest.

Errors carry the line of the key in the JSON text, found by a small scanner
that records where every value starts (json.loads keeps no positions).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tether.bundle.model import (
    Directory,
    File,
    FilePolicy,
    Group,
    Link,
    Location,
    Owner,
    Unit,
    UnitState,
    User,
)
from tether.errors import ManifestError

SUPPORTED_VERSIONS = re.compile(r"3\.[0-4]\.0(-experimental)?")
REMOTE_SCHEMES = ("http", "https", "s3", "tftp", "gs")
NEEDS_A_DISK = ("disks", "raid", "filesystems", "luks")

SourceReader = Callable[[PurePosixPath, Location], bytes]


@dataclass
class IgnitionResources:
    files: list[File] = field(default_factory=list)
    directories: list[Directory] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    kargs: list[str] = field(default_factory=list)
    kargs_absent: list[str] = field(default_factory=list)


def value_lines(text: str) -> dict[str, int]:
    """The line where each value starts, by dotted path (`storage.files[0].mode`)."""
    lines: dict[str, int] = {}
    position = 0

    def line_at(index: int) -> int:
        return text.count("\n", 0, index) + 1

    def skip() -> None:
        nonlocal position
        while position < len(text) and text[position] in " \t\r\n":
            position += 1

    def string() -> str:
        nonlocal position
        value, end = json.decoder.scanstring(text, position + 1)  # type: ignore[attr-defined]
        position = end
        return str(value)

    def value(path: str) -> None:
        nonlocal position
        skip()
        lines[path] = line_at(position)
        if text[position] == "{":
            position += 1
            skip()
            while text[position] != "}":
                key = string()
                skip()
                position += 1  # the colon
                value(f"{path}.{key}" if path else key)
                skip()
                if text[position] == ",":
                    position += 1
                    skip()
            position += 1
        elif text[position] == "[":
            position += 1
            skip()
            index = 0
            while text[position] != "]":
                value(f"{path}[{index}]")
                index += 1
                skip()
                if text[position] == ",":
                    position += 1
                    skip()
            position += 1
        elif text[position] == '"':
            string()
        else:
            match = re.compile(r"[^,\]\}\s]+").match(text, position)
            position = match.end() if match else position + 1

    value("")
    return lines


class _Reader:
    def __init__(self, file: Path, lines: dict[str, int], read_source: SourceReader) -> None:
        self.file = file
        self.lines = lines
        self.read_source = read_source

    def location(self, path: str) -> Location:
        line = self.lines.get(path)
        probe = path
        while line is None and ("." in probe or "[" in probe):
            probe = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            line = self.lines.get(probe)
        return Location(self.file, line, path)

    def error(self, path: str, message: str) -> ManifestError:
        where = self.location(path)
        return ManifestError(where.file, where.line, path, message)

    def table(self, value: Any, path: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected an object, got {type(value).__name__}")
        for key in value:
            if key not in known:
                raise self.error(f"{path}.{key}" if path else key, f"unknown key '{key}'")
        return value

    def array(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"expected an array, got {type(value).__name__}")
        return value

    def string(self, value: Any, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.error(path, "is required")
            return None
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {type(value).__name__}")
        return value

    def absolute(self, value: Any, path: str) -> PurePosixPath:
        text = self.string(value, path, required=True)
        assert text is not None
        clean = PurePosixPath(text)
        if not clean.is_absolute() or ".." in clean.parts or str(clean) != text or text == "/":
            raise self.error(path, f"'{text}' is not a normalised absolute path")
        return clean

    def owner(self, value: Any, path: str) -> Owner:
        node = self.table(value, path, ("id", "name"))
        if node.get("id") is not None:
            if not isinstance(node["id"], int) or node["id"] < 0:
                raise self.error(f"{path}.id", "expected a non-negative integer")
            return Owner(id=node["id"])
        name = self.string(node.get("name"), f"{path}.name")
        return Owner(name=name) if name else Owner(name="root")

    def mode(self, value: Any, path: str, default: int) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o7777:
            raise self.error(path, "expected a mode as a decimal integer (420 for 0644)")
        return value

    def contents(self, value: Any, path: str) -> bytes | None:
        node = self.table(value, path, ("source", "compression", "verification", "httpHeaders"))
        source = self.string(node.get("source"), f"{path}.source")
        if source is None:
            return None if not node else b""
        if node.get("httpHeaders"):
            raise self.error(f"{path}.httpHeaders", "HTTP headers need a remote source, which is not allowed")
        scheme = urllib.parse.urlsplit(source).scheme
        if scheme in REMOTE_SCHEMES:
            raise self.error(
                f"{path}.source", f"remote sources ({scheme}://) are not allowed: put the data in the bundle"
            )
        if scheme == "data":
            data = _data_url(source, lambda message: self.error(f"{path}.source", message))
        elif scheme:
            raise self.error(f"{path}.source", f"unknown source scheme '{scheme}:'")
        else:
            data = self.read_source(PurePosixPath(source), self.location(f"{path}.source"))
        compression = self.string(node.get("compression"), f"{path}.compression")
        if compression == "gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as e:
                raise self.error(f"{path}.source", f"not gzip data: {e}") from None
        elif compression not in (None, ""):
            raise self.error(f"{path}.compression", f"unknown compression '{compression}'")
        return data


def _data_url(url: str, error: Callable[[str], ManifestError]) -> bytes:
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise error("a data: URL needs a ',' before its data")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as e:
            raise error(f"invalid base64 in the data: URL: {e}") from None
    return urllib.parse.unquote_to_bytes(payload)


def load_ignition(file: Path, text: str, read_source: SourceReader) -> IgnitionResources:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(file, e.lineno, None, f"invalid JSON: {e.msg}") from None
    except RecursionError:
        raise ManifestError(file, None, None, "invalid JSON: values are nested too deeply") from None
    reader = _Reader(file, value_lines(text), read_source)
    top = reader.table(document, "", ("ignition", "storage", "systemd", "passwd", "kernelArguments"))
    ignition = reader.table(
        top.get("ignition"), "ignition", ("version", "config", "timeouts", "security", "proxy")
    )
    version = reader.string(ignition.get("version"), "ignition.version", required=True)
    if not SUPPORTED_VERSIONS.fullmatch(version or ""):
        raise reader.error("ignition.version", f"spec version '{version}' is not 3.0.0 to 3.4.0")
    config = reader.table(ignition.get("config"), "ignition.config", ("merge", "replace"))
    for key in ("merge", "replace"):
        if config.get(key):
            raise reader.error(f"ignition.config.{key}", f"config {key} fetches other configs: not supported")
    for key in ("security", "proxy"):
        if ignition.get(key):
            raise reader.error(
                f"ignition.{key}", "only needed to fetch remote resources, which are not allowed"
            )

    resources = IgnitionResources()
    _storage(reader, top.get("storage"), resources)
    _systemd(reader, top.get("systemd"), resources)
    _passwd(reader, top.get("passwd"), resources)
    kargs = reader.table(top.get("kernelArguments"), "kernelArguments", ("shouldExist", "shouldNotExist"))
    for key, target in (("shouldExist", resources.kargs), ("shouldNotExist", resources.kargs_absent)):
        for index, karg in enumerate(reader.array(kargs.get(key), f"kernelArguments.{key}")):
            word = reader.string(karg, f"kernelArguments.{key}[{index}]", required=True)
            assert word is not None
            if not word or any(c.isspace() for c in word) or word.startswith("ostree="):
                raise reader.error(
                    f"kernelArguments.{key}[{index}]", f"'{word}' is not a kernel argument tether manages"
                )
            target.append(word)
    return resources


def _storage(reader: _Reader, value: Any, out: IgnitionResources) -> None:
    storage = reader.table(value, "storage", ("files", "directories", "links", *NEEDS_A_DISK))
    for key in NEEDS_A_DISK:
        if storage.get(key):
            raise reader.error(
                f"storage.{key}", f"storage.{key} needs a disk: it cannot be applied to a running system"
            )
    for index, node in enumerate(reader.array(storage.get("files"), "storage.files")):
        path = f"storage.files[{index}]"
        item = reader.table(node, path, ("path", "overwrite", "contents", "append", "mode", "user", "group"))
        content = reader.contents(item.get("contents"), f"{path}.contents")
        appended = [
            reader.contents(a, f"{path}.append[{i}]") or b""
            for i, a in enumerate(reader.array(item.get("append"), f"{path}.append"))
        ]
        if content is None and not appended:
            content = b""
        out.files.append(
            File(
                path=reader.absolute(item.get("path"), f"{path}.path"),
                content=content,
                source=None,
                mode=reader.mode(item.get("mode"), f"{path}.mode", 0o644),
                owner=reader.owner(item.get("user"), f"{path}.user"),
                group=reader.owner(item.get("group"), f"{path}.group"),
                policy=FilePolicy.ENFORCE if item.get("overwrite") is True else FilePolicy.DEFAULT,
                location=reader.location(path),
                append=b"".join(appended) if appended else None,
            )
        )
    for index, node in enumerate(reader.array(storage.get("directories"), "storage.directories")):
        path = f"storage.directories[{index}]"
        item = reader.table(node, path, ("path", "overwrite", "mode", "user", "group"))
        out.directories.append(
            Directory(
                path=reader.absolute(item.get("path"), f"{path}.path"),
                mode=reader.mode(item.get("mode"), f"{path}.mode", 0o755),
                owner=reader.owner(item.get("user"), f"{path}.user"),
                group=reader.owner(item.get("group"), f"{path}.group"),
                location=reader.location(path),
            )
        )
    for index, node in enumerate(reader.array(storage.get("links"), "storage.links")):
        path = f"storage.links[{index}]"
        item = reader.table(node, path, ("path", "overwrite", "target", "hard", "user", "group"))
        if item.get("hard"):
            raise reader.error(f"{path}.hard", "hard links cannot be declared: use a symbolic link")
        target = reader.string(item.get("target"), f"{path}.target", required=True)
        assert target is not None
        out.links.append(
            Link(reader.absolute(item.get("path"), f"{path}.path"), target, reader.location(path))
        )


def _systemd(reader: _Reader, value: Any, out: IgnitionResources) -> None:
    systemd = reader.table(value, "systemd", ("units",))
    for index, node in enumerate(reader.array(systemd.get("units"), "systemd.units")):
        path = f"systemd.units[{index}]"
        item = reader.table(node, path, ("name", "enabled", "mask", "contents", "dropins"))
        name = reader.string(item.get("name"), f"{path}.name", required=True)
        assert name is not None
        if not re.fullmatch(
            r"[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount|automount|slice|swap)", name
        ):
            raise reader.error(f"{path}.name", f"'{name}' is not a unit name")
        state: UnitState | None = None
        if item.get("mask") is True:
            state = UnitState.MASKED
        elif item.get("enabled") is True:
            state = UnitState.ENABLED
        elif item.get("enabled") is False:
            state = UnitState.DISABLED
        contents = reader.string(item.get("contents"), f"{path}.contents")
        dropins = []
        for i, dropin in enumerate(reader.array(item.get("dropins"), f"{path}.dropins")):
            entry = reader.table(dropin, f"{path}.dropins[{i}]", ("name", "contents"))
            dropin_name = reader.string(entry.get("name"), f"{path}.dropins[{i}].name", required=True)
            assert dropin_name is not None
            if "/" in dropin_name or not dropin_name.endswith(".conf"):
                raise reader.error(f"{path}.dropins[{i}].name", f"'{dropin_name}' is not a drop-in file name")
            body = reader.string(entry.get("contents"), f"{path}.dropins[{i}].contents") or ""
            dropins.append((dropin_name, body.encode()))
        out.units.append(
            Unit(
                name=name,
                source=None,
                state=state,
                dropins=(),
                location=reader.location(path),
                content=contents.encode() if contents is not None else None,
                dropin_contents=tuple(dropins),
            )
        )


def _passwd(reader: _Reader, value: Any, out: IgnitionResources) -> None:
    passwd = reader.table(value, "passwd", ("users", "groups"))
    user_keys = (
        "name",
        "uid",
        "groups",
        "homeDir",
        "shell",
        "sshAuthorizedKeys",
        "passwordHash",
        "gecos",
        "noCreateHome",
        "noUserGroup",
        "noLogInit",
        "primaryGroup",
        "system",
        "shouldExist",
    )
    for index, node in enumerate(reader.array(passwd.get("users"), "passwd.users")):
        path = f"passwd.users[{index}]"
        item = reader.table(node, path, user_keys)
        if item.get("shouldExist") is False:
            raise reader.error(
                f"{path}.shouldExist", "removing an account is not supported: accounts are disabled"
            )
        name = reader.string(item.get("name"), f"{path}.name", required=True)
        assert name is not None
        uid = item.get("uid")
        if uid is not None and (not isinstance(uid, int) or uid < 0):
            raise reader.error(f"{path}.uid", "expected a non-negative integer")
        home = reader.string(item.get("homeDir"), f"{path}.homeDir")
        shell = reader.string(item.get("shell"), f"{path}.shell")
        keys = [
            reader.string(k, f"{path}.sshAuthorizedKeys[{i}]", required=True) or ""
            for i, k in enumerate(reader.array(item.get("sshAuthorizedKeys"), f"{path}.sshAuthorizedKeys"))
        ]
        groups = [
            reader.string(g, f"{path}.groups[{i}]", required=True) or ""
            for i, g in enumerate(reader.array(item.get("groups"), f"{path}.groups"))
        ]
        out.users.append(
            User(
                name=name,
                uid=uid,
                groups=tuple(groups),
                home=PurePosixPath(home) if home else PurePosixPath(f"/var/home/{name}") if keys else None,
                shell=PurePosixPath(shell) if shell else None,
                ssh_authorized_keys=tuple(keys),
                password_hash=reader.string(item.get("passwordHash"), f"{path}.passwordHash"),
                location=reader.location(path),
            )
        )
    for index, node in enumerate(reader.array(passwd.get("groups"), "passwd.groups")):
        path = f"passwd.groups[{index}]"
        item = reader.table(node, path, ("name", "gid", "passwordHash", "system", "shouldExist"))
        if item.get("shouldExist") is False:
            raise reader.error(f"{path}.shouldExist", "removing a group is not supported")
        name = reader.string(item.get("name"), f"{path}.name", required=True)
        assert name is not None
        gid = item.get("gid")
        if gid is not None and (not isinstance(gid, int) or gid < 0):
            raise reader.error(f"{path}.gid", "expected a non-negative integer")
        out.groups.append(Group(name, gid, reader.location(path)))
