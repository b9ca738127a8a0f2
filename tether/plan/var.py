"""Where machine state under /var is decided: what `converge` makes, keeps or removes.

Pure. /var is shared by every deployment of a stateroot, so nothing writes it
at upgrade time; at boot, `converge` makes the booted deployment's declared
/var resources (directories, files, links, SSH authorized keys, a swap file)
and removes those tether made that the deployment no longer declares, but
only when they are still exactly what tether made. Rolling back therefore
rolls /var back too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import PurePosixPath

from tether.etcstate import Image


@dataclass(frozen=True)
class VarResource:
    """A declared /var resource, resolved to numbers: what converge should find there."""

    path: PurePosixPath  # absolute, under /var
    kind: str  # "dir", "file", "link", "swap"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    content: bytes | None = None  # files
    target: str | None = None  # links
    size: int | None = None  # swap files


@dataclass(frozen=True)
class MadeRecord:
    """What tether made at a path, as it made it."""

    path: str
    image: Image
    swap_uuid: str | None = None


class VarAction(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"  # ours and unchanged since: brought to the new declaration
    KEEP = "keep"  # already as declared
    LEAVE = "leave"  # someone else's, or changed since we made it: reported, not touched
    REMOVE = "remove"  # ours, unchanged, no longer declared


def matches(resource: VarResource, image: Image | None, content_sha: str | None) -> bool:
    if image is None:
        return False
    if resource.kind == "swap":
        return image.kind == "file" and image.mode == 0o600
    if image.kind != resource.kind or (image.uid, image.gid) != (resource.uid, resource.gid):
        return False
    if resource.kind == "link":
        return image.target == resource.target
    if image.mode != resource.mode:
        return False
    return resource.kind == "dir" or image.sha256 == content_sha


def decide(
    resource: VarResource | None, made: MadeRecord | None, current: Image | None, content_sha: str | None
) -> VarAction:
    if resource is None:
        if made is None or current is None:
            return VarAction.KEEP
        return VarAction.REMOVE if current == made.image else VarAction.LEAVE
    if current is None:
        return VarAction.CREATE
    if matches(resource, current, content_sha):
        return VarAction.KEEP
    if made is not None and current == made.image:
        return VarAction.UPDATE
    return VarAction.LEAVE
