"""backup → a fresh sysroot → restore --install: the machine's /etc and /var come back, file by file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.world import World

BUNDLE = """
[bundle]
name = "kiosk"
version = "1"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = ["quiet"]

[[directory]]
path = "/var/lib/kiosk"
"""


def _entries(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry with type, mode, owner, content or target, and xattrs."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(root))
            if relative.startswith(skip):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            else:
                body = None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {k: os.getxattr(path, k) for k in os.listxattr(path)}
            found[relative] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                body,
                xattrs,
            )
    return found


def test_backup_restore_round_trip(world: World, tmp_path: Path) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE)
    assert world.install("kiosk", "--karg", "root=LABEL=root").code == 0
    assert world.run("converge").code == 0
    etc = world.etc()
    (etc / "admin.conf").write_text("mine\n")
    os.chown(etc / "admin.conf", 1000, 44)
    os.chmod(etc / "admin.conf", 0o640)
    os.setxattr(etc / "admin.conf", "user.origin", b"handmade")
    subprocess.run(["setfacl", "-m", "u:1000:r", str(etc / "motd")], check=True)
    (etc / "motd").write_text("edited motd\n")
    (etc / "hostname").unlink()  # a removed default
    (etc / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    var = world.sysroot / "ostree/deploy/exampleos/var"
    (var / "lib/kiosk/data.db").write_bytes(b"\x00data")
    (var / "cache").mkdir(exist_ok=True)
    (var / "cache/big").write_bytes(b"cache")
    (var / "home/alice").mkdir(parents=True)
    os.chown(var / "home/alice", 1000, 1000)

    archive = tmp_path / "machine.tar"
    result = world.run("backup", "--output", archive)
    assert result.code == 0, result.err
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    members = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True).stdout.split()
    assert "etc/machine-id" not in members, "no identity without --with-identity"
    assert not any(m.startswith("var/cache/") for m in members)

    fresh = World(tmp_path / "fresh")
    fresh.repo = world.repo
    result = fresh.run("restore", archive, "--install")
    assert result.code == 0, result.err
    [status] = fresh.status()
    assert status["kernel_arguments"] == ["root=LABEL=root", "quiet"]
    restored = fresh.etc()
    skip = ("machine-id",)
    assert _entries(restored, skip) == _entries(etc, skip)
    var_skip = ("lib/tether", "cache")
    assert _entries(fresh.sysroot / "ostree/deploy/exampleos/var", var_skip) == _entries(var, var_skip)
    assert not (restored / "hostname").exists()


def test_restore_refuses_another_bundle(world: World, tmp_path: Path) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE)
    world.publish_bundle("signage", BUNDLE.replace('"kiosk"', '"signage"'))
    assert world.install("kiosk").code == 0
    archive = tmp_path / "machine.tar"
    assert world.run("backup", "-o", archive).code == 0
    other = World(tmp_path / "other")
    other.repo = world.repo
    assert other.install("signage").code == 0
    before = other.snapshot()
    result = other.run("restore", archive)
    assert result.code == 2, result
    assert "install that bundle first" in result.err
    assert other.snapshot() == before


def test_restore_of_garbage_is_refused(world: World, tmp_path: Path) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE)
    assert world.install().code == 0
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all")
    before = world.snapshot()
    result = world.run("restore", garbage)
    assert result.code == 2 and "not a tether backup" in result.err
    assert world.snapshot() == before
