"""install → upgrade → rollback of a real debootstrapped Debian tree (slow tier).

The same flow as test_upgrade.py on a real OS: thousands of files, Debian's
own /etc defaults in /usr/etc, units enabled through /lib paths, and deploy
hooks running the OS's own shell and tools in the sandbox.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ostree_trees import debian_tree
from tests.world import World

pytestmark = pytest.mark.slow

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = {kargs}

[system]
locale = "C.UTF-8"
timezone = "Europe/Madrid"
hostname = "kiosk-{version}"

{extra}

[[hook]]
stage = "deploy"
run = "hooks/setup.sh"
"""

MOTD = """
[[file]]
path = "/etc/motd"
content = "Debian kiosk\\n"
"""

GETTY_MASKED = """
[[unit]]
name = "getty@tty1.service"
enabled = "masked"
"""

HOOK = """#!/bin/sh
set -eu
# a real OS's tools, run as root in the new deployment
sed -i 's/^#\\?NAutoVTs=.*/NAutoVTs=2/' /etc/systemd/logind.conf
install -d -m 0750 -o root -g adm /etc/kiosk
echo "{version}" > /etc/kiosk/release
if touch /usr/should-fail 2>/dev/null; then echo "/usr is writable" >&2; exit 1; fi
"""


def _os_tree(world: World, name: str, motd: str) -> Path:
    tree = debian_tree(dest=world.root / name)
    (tree / "usr/etc/motd").write_text(motd)
    return tree


@pytest.fixture
def debian(world: World) -> World:
    world.publish_os(tree=_os_tree(world, "debian-1", "Debian 1\n"))
    return world


def _bundle(world: World, version: str, kargs: str, extra: str) -> None:
    world.publish_bundle(
        "kiosk",
        BUNDLE.format(version=version, kargs=kargs, extra=extra),
        {"hooks/setup.sh": HOOK.format(version=version)},
    )


def test_debian_install_upgrade_rollback(debian: World) -> None:
    world = debian
    _bundle(world, "1", '["quiet", "console=ttyS0,115200"]', MOTD + GETTY_MASKED)
    result = world.install("kiosk", "--karg", "root=LABEL=root")
    assert result.code == 0, result.err
    etc = world.etc()
    assert (etc / "motd").read_text() == "Debian kiosk\n"
    assert (etc / "hostname").read_text() == "kiosk-1\n"
    assert (etc / "kiosk/release").read_text() == "1\n"
    assert "NAutoVTs=2" in (etc / "systemd/logind.conf").read_text()
    assert str((etc / "systemd/system/getty@tty1.service").readlink()) == "/dev/null"
    assert not (etc / "systemd/system/getty.target.wants/getty@tty1.service").exists()
    assert (etc / "kiosk").stat().st_gid == 4  # adm, resolved inside the OS
    assert not (world.deployment_root() / "usr/should-fail").exists()
    (etc / "admin-note").write_text("keep me\n")

    world.publish_os(tree=_os_tree(world, "debian-2", "Debian 2\n"))
    _bundle(world, "2", '["quiet"]', "")
    result = world.run("upgrade")
    assert result.code == 0, result.err
    new, old = world.status()
    assert new["kernel_arguments"] == ["root=LABEL=root", "quiet"]
    etc = world.etc()
    assert (etc / "motd").read_text() == "Debian 2\n", "the file left the bundle: the new OS default is back"
    assert (etc / "systemd/system/getty.target.wants/getty@tty1.service").is_symlink(), "unmasked: OS default"
    assert not (etc / "systemd/system/getty@tty1.service").exists()
    assert (etc / "kiosk/release").read_text() == "2\n"
    assert (etc / "admin-note").read_text() == "keep me\n"
    assert old["rollback"]

    assert world.run("rollback").code == 0
    assert world.status()[0]["bundle"]["version"] == "1"
    assert world.run("upgrade").code == 0, "upgrading again from the rolled-back pair"
    assert world.status()[0]["bundle"]["version"] == "2"
    fsck = subprocess.run(
        ["ostree", f"--repo={world.sysroot}/ostree/repo", "fsck", "--quiet"], capture_output=True
    )
    assert fsck.returncode == 0, fsck.stderr


def test_debian_shared_tree_is_untouched() -> None:
    tree = debian_tree()
    assert (tree / "usr/etc/motd").read_text() != "Debian 1\n"
    assert shutil.which("debootstrap")
