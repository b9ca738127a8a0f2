"""The shapes of manifest values: sizes, durations, modes, names, paths and the like.

Each converter takes a value as `tomllib` produced it and returns the model's
type, or raises `ValueError` with a message written to follow a
`file:line:key: ` prefix, which `tether.bundle.manifest` adds. Converters know
nothing of tables or the bundle directory; checks that need the bundle's files
live in `tether.bundle.paths`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import PurePosixPath
from typing import TypeVar

from tether.bundle.locate import KeyPath
from tether.bundle.model import Owner, UnitState
from tether.bundle.paths import absolute_path

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

_SIZE = re.compile(r"([0-9]{1,19})([KMGT]?)")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION = re.compile(r"([0-9]{1,9})([smh])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
_MODE = re.compile(r"0?[0-7]{3,4}")

_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HOSTNAME_MAX = 64  # the kernel's limit, stricter than RFC 1123's 253 for a whole name
_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_@:+*-]+([./][A-Za-z0-9_@:+*-]+)*")
_SYSCTL_KEY_MAX = 255
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
_UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?"
    r"\.(service|socket|timer|target|path|mount|automount|slice|swap)"
)
_UNIT_NAME_MAX = 255
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEVICE_TAGS = ("LABEL=", "UUID=", "PARTLABEL=", "PARTUUID=")
_TREE_ROOTS = ("etc", "usr", "var")
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "no id"
_LINK_TARGET_MAX = 4095


class WrongType(ValueError):
    """A value of the wrong TOML type: bad input, not a programming error, hence not a TypeError."""


class InvalidElement(ValueError):
    """A bad value below the key being converted (an array element); `within` says where."""

    def __init__(self, message: str, within: KeyPath) -> None:
        super().__init__(message)
        self.within = within


def parse_size(text: str) -> int:
    """Bytes in `512M`, `2G`, `4096`."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid size {text!r} (a number with an optional K, M, G or T suffix, like '512M')"
        )
    return int(match[1]) * _SIZE_UNITS[match[2]]


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `5m`, `1h`."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r} (a number with an s, m or h suffix, like '90s')")
    return float(int(match[1]) * _DURATION_UNITS[match[2]])


def parse_mode(text: str) -> int:
    """A permission mode in octal, `0644` or `4755`; four digits at most, so never above 0o7777."""
    if _MODE.fullmatch(text) is None:
        raise ValueError(f"invalid mode {text!r} (octal digits, like '0644')")
    return int(text, 8)


def type_name(value: object) -> str:
    names: list[tuple[type, str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),
        (date, "date"),
        (time, "time"),
    ]
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


def text(value: object) -> str:
    """Any string, NUL included: file content."""
    if not isinstance(value, str):
        raise WrongType(f"expected a string, got {type_name(value)}")
    return value


def string(value: object) -> str:
    """A string that will end up in a file name, a command line or a C string."""
    result = text(value)
    if "\0" in result:
        raise ValueError("may not contain a NUL character")
    return result


def word(value: object) -> str:
    """A non-empty string without whitespace, as fstab fields and kernel arguments need."""
    result = string(value)
    if not result:
        raise ValueError("may not be empty")
    if any(char.isspace() for char in result):
        raise ValueError(f"{result!r} contains whitespace")
    return result


def single_line(value: object) -> str:
    result = string(value)
    if not result.strip() or "\n" in result or "\r" in result:
        raise ValueError("must be a single non-empty line")
    return result


def matching(pattern: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(pattern)

    def convert(value: object) -> str:
        result = string(value)
        if compiled.fullmatch(result) is None:
            raise ValueError(f"invalid {what} {result!r}")
        return result

    return convert


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongType(f"expected true or false, got {type_name(value)}")
    return value


def integer(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        # TOML booleans arrive as bool, which Python counts as an int.
        if isinstance(value, bool) or not isinstance(value, int):
            raise WrongType(f"expected an integer, got {type_name(value)}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value

    return convert


identifier = integer(0, _ID_MAX)


def choice(kind: type[E]) -> Callable[[object], E]:
    def convert(value: object) -> E:
        result = string(value)
        for member in kind:
            if member.value == result:
                return member
        expected = ", ".join(repr(member.value) for member in kind)
        raise ValueError(f"invalid value {result!r} (expected one of {expected})")

    return convert


def array(convert: Callable[[object], T], *, unique: bool = False) -> Callable[[object], tuple[T, ...]]:
    def convert_all(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise WrongType(f"expected an array, got {type_name(value)}")
        items: list[T] = []
        seen: set[object] = set()
        for index, item in enumerate(value):
            try:
                converted = convert(item)
            except ValueError as error:
                raise InvalidElement(str(error), (index,)) from None
            if unique and converted in seen:
                raise InvalidElement(f"{item!r} is listed twice", (index,))
            seen.add(converted)
            items.append(converted)
        return tuple(items)

    return convert_all


def positive_size(value: object) -> int:
    size = parse_size(string(value))
    if size == 0:
        raise ValueError("size must be larger than 0")
    return size


def timeout(value: object) -> float:
    seconds = parse_duration(string(value))
    if seconds == 0:
        raise ValueError("timeout must be longer than 0s")
    return seconds


def mode(value: object) -> int:
    # A bare 644 in TOML is decimal (0o1204): almost certainly not what was meant.
    if isinstance(value, int) and not isinstance(value, bool):
        raise WrongType(f'write the mode as an octal string, like "0644", not the integer {value}')
    return parse_mode(string(value))


def owner(value: object) -> Owner:
    if isinstance(value, int) and not isinstance(value, bool):
        return Owner(id=identifier(value))
    name = string(value)
    if _ACCOUNT.fullmatch(name) is None:
        raise ValueError(f"invalid user or group name {name!r} (write an id as a number, without quotes)")
    return Owner(name=name)


def account(what: str) -> Callable[[object], str]:
    """A user or group name as shadow-utils accepts it."""
    return matching(_ACCOUNT.pattern, what)


def absolute(value: object) -> PurePosixPath:
    return absolute_path(string(value))


def home(value: object) -> PurePosixPath:
    return absolute_path(string(value), allow_root=True)


def tree_path(value: object) -> PurePosixPath:
    """A path a file, directory or link may be declared at."""
    path = absolute(value)
    parts = path.parts
    if parts[1:3] == ("usr", "etc"):
        rest = "/".join(parts[3:]) or "..."
        raise ValueError(f"{path} is where ostree keeps the /etc defaults; declare /etc/{rest} instead")
    if len(parts) < 3 or parts[1] not in _TREE_ROOTS:
        raise ValueError(f"{path} is not below /etc, /usr or /var")
    return path


def var_path(value: object) -> PurePosixPath:
    path = absolute(value)
    if len(path.parts) < 3 or path.parts[1] != "var":
        raise ValueError(f"{path} is not below /var")
    return path


def device(value: object) -> str:
    result = word(value)
    if result.startswith(_DEVICE_TAGS) and not result.endswith("="):
        return result
    if result.startswith("/dev/"):
        return str(absolute_path(result))
    raise ValueError(f"invalid device {result!r} (expected /dev/..., LABEL=, UUID=, PARTLABEL= or PARTUUID=)")


def hostname(value: object) -> str:
    name = string(value)
    if len(name) > _HOSTNAME_MAX or not all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"invalid hostname {name!r} (dot-separated labels of letters, digits and inner hyphens, "
            f"at most {_HOSTNAME_MAX} characters)"
        )
    return name


def karg(value: object) -> str:
    argument = word(value)
    if argument.split("=", 1)[0] == "ostree":
        raise ValueError("ostree= belongs to ostree and may not be declared")
    return argument


def unit_name(value: object) -> str:
    name = string(value)
    if len(name) > _UNIT_NAME_MAX or _UNIT_NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid unit name {name!r} (a name ending in .service, .socket, .timer, .target, "
            ".path, .mount, .automount, .slice or .swap)"
        )
    return name


def unit_state(value: object) -> UnitState:
    if isinstance(value, bool):
        return UnitState.ENABLED if value else UnitState.DISABLED
    if value == UnitState.MASKED.value:
        return UnitState.MASKED
    shown = repr(value) if isinstance(value, str) else type_name(value)
    raise ValueError(f'expected true, false or "masked", got {shown}')


def dropin_name(name: str) -> str:
    if "/" in name or "\0" in name or not name.endswith(".conf") or name == ".conf":
        raise ValueError(f"invalid drop-in name {name!r} (a file name ending in .conf)")
    return name


def sysctl_key(name: str) -> str:
    if len(name) > _SYSCTL_KEY_MAX or _SYSCTL_KEY.fullmatch(name) is None:
        raise ValueError(f"invalid sysctl key {name!r}")
    return name


def variable_name(name: str) -> str:
    if _VARIABLE.fullmatch(name) is None:
        raise ValueError(f"invalid variable name {name!r}")
    return name


def option(value: object) -> str:
    """A word that is joined to others with commas: a mount option, an Ansible tag."""
    result = word(value)
    if "," in result:
        raise ValueError(f"{result!r} contains a comma; list each one separately")
    return result


def link_target(value: object) -> str:
    target = string(value)
    if not target or len(target.encode()) > _LINK_TARGET_MAX:
        raise ValueError(f"a link target must be 1 to {_LINK_TARGET_MAX} bytes long")
    return target


def password_hash(value: object) -> str:
    result = word(value)
    if ":" in result:
        raise ValueError("a password hash may not contain ':'")
    return result
