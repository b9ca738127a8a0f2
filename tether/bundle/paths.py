"""Path rules for bundles: the shape of target paths, and confinement of the bundle directory.

A bundle is untrusted until it is verified, so every file tether reads from
it goes through here: a source path must be relative and normalised, must
resolve (following symlinks) to a regular file inside the bundle directory, and
is read without blocking on whatever may have replaced it since it was checked.
`scan_bundle` holds the whole directory to the same rules, because all of it is
committed into the composed tree. Checks on a single value raise `ValueError`
with a message fit to show after a file:line:key prefix; `scan_bundle` and
`read_confined` raise `ManifestError` naming the offending file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from tether.errors import ManifestError

MAX_FILE_SIZE = 64 << 20
MAX_BUNDLE_SIZE = 1 << 30
_NAME_MAX = 255
_PATH_MAX = 4095


def absolute_path(text: str, *, allow_root: bool = False) -> PurePosixPath:
    if not text.startswith("/"):
        raise ValueError(f"path {text!r} is not absolute")
    if text == "/":
        if allow_root:
            return PurePosixPath("/")
        raise ValueError("path may not be / itself")
    _check_components(text, text[1:])
    return PurePosixPath(text)


def relative_path(text: str) -> PurePosixPath:
    if text.startswith("/"):
        raise ValueError(f"path {text!r} must be relative to the bundle directory")
    _check_components(text, text)
    return PurePosixPath(text)


def _check_components(text: str, relative: str) -> None:
    if "\0" in text:
        raise ValueError(f"path {text!r} contains a NUL character")
    if len(text.encode()) > _PATH_MAX:
        raise ValueError(f"path is longer than {_PATH_MAX} bytes")
    for part in relative.split("/"):
        if part == "":
            raise ValueError(f"path {text!r} is not normalised (empty component or trailing /)")
        if part in (".", ".."):
            raise ValueError(f"path {text!r} may not contain a '{part}' component")
        if len(part.encode()) > _NAME_MAX:
            raise ValueError(f"path {text!r} has a component longer than {_NAME_MAX} bytes")


def _describe(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _confine(root: Path, source: PurePosixPath) -> Path:
    resolved = Path(os.path.realpath(root / source))
    if not resolved.is_relative_to(root):
        raise ValueError(f"{source} resolves outside the bundle directory")
    return resolved


def check_source(root: Path, source: PurePosixPath) -> None:
    """Check that `source` names a regular file inside `root` (a resolved directory)."""
    resolved = _confine(root, source)
    try:
        info = resolved.lstat()
    except FileNotFoundError:
        raise ValueError(f"{source} does not exist in the bundle directory") from None
    except OSError as error:
        raise ValueError(f"{source}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{source} is {_describe(info.st_mode)}, not a regular file")
    if info.st_size > MAX_FILE_SIZE:
        raise ValueError(f"{source} is larger than {MAX_FILE_SIZE >> 20} MiB")


def read_confined(root: Path, source: PurePosixPath) -> bytes:
    """Read a regular file of at most 64 MiB from inside `root`, a resolved directory."""
    shown = root / source
    try:
        relative_path(str(source))
        resolved = _confine(root, source)
    except ValueError as error:
        raise ManifestError(shown, None, None, str(error)) from None
    # O_NONBLOCK: a fifo put in place after the checks must not hang the read.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(resolved, flags)
    except FileNotFoundError:
        raise ManifestError(shown, None, None, "does not exist in the bundle directory") from None
    except OSError as error:
        raise ManifestError(shown, None, None, f"cannot open: {error.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(shown, None, None, f"is {_describe(info.st_mode)}, not a regular file")
        data = stream.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise ManifestError(shown, None, None, f"is larger than {MAX_FILE_SIZE >> 20} MiB")
    return data


def scan_bundle(root: Path, max_size: int) -> None:
    """Hold every entry of the bundle directory `root` (resolved) to the bundle rules."""
    total = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            raise ManifestError(directory, None, None, f"cannot read: {error.strerror}") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as error:
                raise ManifestError(path, None, None, f"cannot read: {error.strerror}") from None
            if stat.S_ISLNK(info.st_mode):
                if not Path(os.path.realpath(path)).is_relative_to(root):
                    raise ManifestError(path, None, None, "symlink points outside the bundle directory")
            elif stat.S_ISDIR(info.st_mode):
                pending.append(path)
            elif not stat.S_ISREG(info.st_mode):
                raise ManifestError(path, None, None, f"bundles may not contain {_describe(info.st_mode)}")
            elif info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                # The whole directory lands in the composed tree; a mode belongs in tether.toml.
                raise ManifestError(
                    path, None, None, "has the setuid or setgid bit; declare modes in tether.toml"
                )
            elif info.st_size > MAX_FILE_SIZE:
                raise ManifestError(path, None, None, f"is larger than {MAX_FILE_SIZE >> 20} MiB")
            else:
                total += info.st_size
                if total > max_size:
                    raise ManifestError(
                        root,
                        None,
                        None,
                        f"bundle is larger than {_format_size(max_size)} (raise bundle.max-size)",
                    )


def _format_size(size: int) -> str:
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return f"{size} bytes"
