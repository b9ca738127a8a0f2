"""Images of /etc entries: what a path holds, comparable and restorable.

A deploy-time step's effect on /etc is the difference between two snapshots
of the deployment's /etc taken around it. An `Image` records one entry (type,
content hash, mode, owner, link target); `None` stands for "absent". The
functions that write images back (restore a pre-image, reset to an OS default)
never follow a symlink out of the /etc tree they are given.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any


@dataclass(frozen=True)
class Image:
    kind: str  # "file", "dir", "link"
    mode: int
    uid: int
    gid: int
    sha256: str | None = None  # files
    target: str | None = None  # links

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> Image | None:
        if raw is None:
            return None
        return cls(**raw)

    def describe(self) -> str:
        if self.kind == "link":
            return f"link to {self.target}"
        if self.kind == "dir":
            return f"directory {self.mode:04o} {self.uid}:{self.gid}"
        return f"file {self.mode:04o} {self.uid}:{self.gid} sha256:{(self.sha256 or '')[:12]}"


Snapshot = dict[str, Image]  # relative path under /etc ("kiosk/app.conf") → image


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_of(path: Path) -> Image | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return Image("link", 0o777, st.st_uid, st.st_gid, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return Image("dir", mode, st.st_uid, st.st_gid)
    if stat.S_ISREG(st.st_mode):
        return Image("file", mode, st.st_uid, st.st_gid, sha256=_sha256(path))
    return Image("other", mode, st.st_uid, st.st_gid)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def snapshot(etc: Path) -> Snapshot:
    return {str(path.relative_to(etc)): image for path in _walk(etc) if (image := image_of(path)) is not None}


@dataclass(frozen=True)
class Change:
    path: str  # relative to /etc
    pre: Image | None
    post: Image | None

    @property
    def verb(self) -> str:
        if self.pre is None:
            return "created"
        if self.post is None:
            return "removed"
        return "modified"


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    paths = sorted(set(before) | set(after))
    return [Change(p, before.get(p), after.get(p)) for p in paths if before.get(p) != after.get(p)]


def confined(etc: Path, relative: str) -> Path:
    """`etc/relative`, refusing `..` and symlinked parents so a write cannot leave the tree."""
    parts = PurePosixPath(relative).parts
    if not parts or any(part in ("", ".", "..") for part in parts) or PurePosixPath(relative).is_absolute():
        raise ValueError(f"not a path inside /etc: {relative!r}")
    current = etc
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise ValueError(f"/etc/{relative}: parent /etc/{current.relative_to(etc)} is a symlink")
    return etc / Path(*parts)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        path.rmdir()  # only empty directories: anything left in them is someone's


def copy_entry(source: Path, destination: Path) -> None:
    """Make `destination` what `source` is (file content, link or directory), with mode and owner."""
    st = source.lstat()
    if destination.is_symlink() or destination.is_file():
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(st.st_mode):
        destination.symlink_to(os.readlink(source))
        os.lchown(destination, st.st_uid, st.st_gid)
        return
    if stat.S_ISDIR(st.st_mode):
        destination.mkdir(exist_ok=True)
    else:
        tmp = destination.with_name(f".{destination.name}.tether-tmp")
        shutil.copyfile(source, tmp, follow_symlinks=False)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.rename(tmp, destination)
        return
    os.chown(destination, st.st_uid, st.st_gid)
    os.chmod(destination, stat.S_IMODE(st.st_mode))


def write_image(destination: Path, image: Image, content: bytes | None) -> None:
    """Make `destination` hold `image`; `content` is the file's bytes for a file image."""
    if destination.is_symlink() or destination.is_file():
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    if image.kind == "link":
        assert image.target is not None
        destination.symlink_to(image.target)
        os.lchown(destination, image.uid, image.gid)
    elif image.kind == "dir":
        destination.mkdir(exist_ok=True)
        os.chown(destination, image.uid, image.gid)
        os.chmod(destination, image.mode)
    else:
        assert content is not None
        tmp = destination.with_name(f".{destination.name}.tether-tmp")
        tmp.write_bytes(content)
        os.chown(tmp, image.uid, image.gid)
        os.chmod(tmp, image.mode)
        os.rename(tmp, destination)
