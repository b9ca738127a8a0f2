"""Users and groups: sysusers.d declarations, entry-wise merges and disabling.

`/etc/passwd`, `group`, `shadow` and `gshadow` are merged by entry name, never
as whole files: the three-way merge keeps a locally changed file whole, which
would hide every system account a new OS commit adds. So after the merge, the
new OS defaults' entries missing by name from the local file are appended.

A bundle's `[[user]]`/`[[group]]` become a sysusers.d file in the composed
tree (the OS's own systemd-sysusers makes them, at deploy time when the tree
has it, else at boot). An account tether made that the bundle no longer
declares is disabled (locked password, nologin shell), never deleted: its
files stay, and its id is not handed to someone else.
"""

from __future__ import annotations

import os
from pathlib import Path

from tether.bundle.model import Bundle

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")
NOLOGIN = "/usr/sbin/nologin"


def sysusers_conf(bundle: Bundle) -> str:
    lines = [f"# managed by tether: bundle {bundle.info.name}\n"]
    for group in bundle.groups:
        lines.append(f"g {group.name} {group.gid if group.gid is not None else '-'}\n")
    for user in bundle.users:
        uid = str(user.uid) if user.uid is not None else "-"
        home = str(user.home) if user.home else "-"
        shell = str(user.shell) if user.shell else "-"
        lines.append(f'u {user.name} {uid} "{user.name}" {home} {shell}\n')
        for member_of in user.groups:
            lines.append(f"m {user.name} {member_of}\n")
    return "".join(lines)


def _entries(text: str) -> list[tuple[str, str]]:
    """(name, line) for each entry; comments and blank lines keep an empty name."""
    return [
        (line.split(":", 1)[0] if line and not line.startswith("#") else "", line)
        for line in text.splitlines()
    ]


def merge_entries(local: str, default: str) -> str:
    """The local file, plus the default's entries whose names it lacks, in the default's order."""
    names = {name for name, _ in _entries(local) if name}
    missing = [line for name, line in _entries(default) if name and name not in names]
    if not missing:
        return local
    body = local if local.endswith("\n") or not local else local + "\n"
    return body + "".join(f"{line}\n" for line in missing)


def _rewrite(path: Path, text: str) -> None:
    st = path.stat()
    tmp = path.with_name(f".{path.name}.tether-tmp")
    tmp.write_text(text)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.rename(tmp, path)


def merge_account_files(etc: Path, defaults: Path) -> list[str]:
    """Add the new OS's accounts to locally changed account files; returns the files changed."""
    changed = []
    for name in ACCOUNT_FILES:
        local, default = etc / name, defaults / name
        if local.is_symlink() or default.is_symlink() or not local.is_file() or not default.is_file():
            continue
        text = local.read_text()
        merged = merge_entries(text, default.read_text())
        if merged != text:
            _rewrite(local, merged)
            changed.append(name)
    return changed


def set_password_hashes(etc: Path, hashes: dict[str, str]) -> list[str]:
    shadow = etc / "shadow"
    if not hashes or not shadow.is_file():
        return []
    lines, changed = [], []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[0] in hashes and fields[1] != hashes[fields[0]]:
            fields[1] = hashes[fields[0]]
            changed.append(fields[0])
        lines.append(":".join(fields))
    if changed:
        _rewrite(shadow, "\n".join(lines) + "\n")
    return changed


def disable_accounts(etc: Path, names: set[str]) -> list[str]:
    """Lock accounts in place: `!` before the hash, nologin as shell; entries and ids stay."""
    disabled: set[str] = set()
    shadow, passwd = etc / "shadow", etc / "passwd"
    if shadow.is_file():
        lines = []
        for line in shadow.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 1 and fields[0] in names:
                if not fields[1].startswith("!"):
                    fields[1] = "!" + fields[1]
                disabled.add(fields[0])
            lines.append(":".join(fields))
        _rewrite(shadow, "\n".join(lines) + "\n")
    if passwd.is_file():
        lines = []
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[0] in names:
                fields[6] = NOLOGIN
                disabled.add(fields[0])
            lines.append(":".join(fields))
        _rewrite(passwd, "\n".join(lines) + "\n")
    return sorted(disabled)


def account_names(etc: Path) -> set[str]:
    passwd = etc / "passwd"
    if not passwd.is_file():
        return set()
    return {name for name, _ in _entries(passwd.read_text()) if name}
