"""`tether converge`: /var resources, the swap file, boot steps and late /etc edits, offline."""

from __future__ import annotations

import subprocess

from tests.world import World
from tether.converge import swap_uuid

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"
{extra}
"""

VAR = """
[[directory]]
path = "/var/lib/kiosk"
mode = "0750"
group = "video"

[[file]]
path = "/var/lib/kiosk/state.json"
content = "{}\\n"
mode = "0640"

[[link]]
path = "/var/lib/kiosk/current"
target = "/usr/share/kiosk"

[[user]]
name = "kiosk"
uid = 1500
home = "/var/home/kiosk"
ssh-authorized-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiosk kiosk@example"]
"""

SWAP = """
[swap]
file = "/var/swapfile"
size = "{size}"
priority = 10
"""

BOOT_HOOK = """
[[hook]]
stage = "boot"
run = "hooks/boot.sh"
"""


def var(world: World):  # type: ignore[no-untyped-def]
    return world.sysroot / "ostree/deploy/exampleos/var"


def test_var_resources_made_updated_and_removed(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=VAR))
    assert world.install().code == 0
    result = world.run("converge")
    assert result.code == 0, result.err
    base = var(world)
    kiosk = base / "lib/kiosk"
    assert kiosk.is_dir() and oct(kiosk.stat().st_mode & 0o7777) == "0o750" and kiosk.stat().st_gid == 44
    assert (kiosk / "state.json").read_text() == "{}\n"
    assert str((kiosk / "current").readlink()) == "/usr/share/kiosk"
    keys = base / "home/kiosk/.ssh/authorized_keys"
    assert keys.read_text().startswith("ssh-ed25519 ") and keys.stat().st_uid == 1500
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert "6 created" in result.out, result.out

    again = world.run("converge")
    assert "0 created, 0 updated, 0 removed" in again.out, "converge twice: nothing to do"

    (base / "lib/kiosk/notes.txt").write_text("the admin's\n")
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    assert world.run("upgrade").code == 0
    result = world.run("converge")
    assert result.code == 0, result.err
    assert not (kiosk / "state.json").exists() and not (kiosk / "current").is_symlink()
    assert (kiosk / "notes.txt").read_text() == "the admin's\n", "what tether did not make stays"
    assert kiosk.is_dir(), "a directory still holding the admin's file is kept"
    assert not keys.exists()

    assert world.run("rollback").code == 0
    assert world.run("converge").code == 0
    assert (kiosk / "state.json").read_text() == "{}\n", "a rollback rolls /var back too"


def test_edited_var_file_is_left_alone(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=VAR))
    assert world.install().code == 0
    assert world.run("converge").code == 0
    state = var(world) / "lib/kiosk/state.json"
    state.write_text('{"edited": true}\n')
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    assert world.run("upgrade").code == 0
    result = world.run("converge")
    assert result.code == 0
    assert state.read_text() == '{"edited": true}\n'
    assert "/var/lib/kiosk/state.json" in result.err


def test_swap_file_made_resized_and_removed_only_if_ours(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=SWAP.format(size="1M")))
    assert world.install().code == 0
    unit = world.deployment_root() / "usr/lib/systemd/system/var-swapfile.swap"
    assert "What=/var/swapfile" in unit.read_text() and "Priority=10" in unit.read_text()
    assert (
        world.deployment_root() / "usr/lib/systemd/system/swap.target.wants/var-swapfile.swap"
    ).is_symlink()
    assert world.run("converge").code == 0
    swapfile = var(world) / "swapfile"
    assert swapfile.stat().st_size == 1 << 20 and oct(swapfile.stat().st_mode & 0o777) == "0o600"
    first_uuid = swap_uuid(swapfile)
    assert first_uuid is not None
    blocks = subprocess.run(
        ["stat", "-c", "%b %B", str(swapfile)], capture_output=True, text=True
    ).stdout.split()
    assert int(blocks[0]) * int(blocks[1]) >= 1 << 20, "no holes"

    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=SWAP.format(size="2M")))
    assert world.run("upgrade").code == 0
    assert world.run("converge").code == 0
    assert swapfile.stat().st_size == 2 << 20 and swap_uuid(swapfile) != first_uuid

    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="3", extra=""))
    assert world.run("upgrade").code == 0
    assert world.run("converge").code == 0
    assert not swapfile.exists()


def test_swap_file_someone_replaced_is_not_removed(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=SWAP.format(size="1M")))
    assert world.install().code == 0
    assert world.run("converge").code == 0
    swapfile = var(world) / "swapfile"
    swapfile.unlink()
    swapfile.write_bytes(b"not a swap file")
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    assert world.run("upgrade").code == 0
    result = world.run("converge")
    assert result.code == 0
    assert swapfile.read_bytes() == b"not a swap file"


def test_boot_steps_run_once_under_the_ledger(world: World) -> None:
    world.publish_os()
    hook = {"hooks/boot.sh": "#!/bin/sh\necho booted >> /etc/boot-runs\nmkdir -p /var/lib/bootstep\n"}
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=BOOT_HOOK), hook)
    assert world.install().code == 0
    assert not (world.etc() / "boot-runs").exists(), "boot steps do not run at upgrade time"
    assert world.run("converge").code == 0
    assert world.run("converge").code == 0
    assert (world.etc() / "boot-runs").read_text() == "booted\n", "once per deployment"
    assert (var(world) / "lib/bootstep").is_dir(), "/var is writable for boot steps"
    [status] = world.status()
    assert any(s["stage"] == "boot" for s in status["steps"])
    # the next bundle drops the step: its /etc change goes like any other step's
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    assert world.run("upgrade").code == 0
    assert not (world.etc() / "boot-runs").exists()


def test_late_etc_edits_on_the_previous_deployment_are_reported(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=""))
    assert world.install().code == 0
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    assert world.run("upgrade").code == 0
    # the admin edits the running (now previous) deployment after the upgrade, before rebooting
    (world.deployment_root(1) / "etc/late.conf").write_text("too late\n")
    result = world.run("converge")
    assert result.code == 0, result.err
    assert "/etc/late.conf was created after the upgrade" in result.err
    saved = list((var(world) / "lib/tether/saved").glob("*/etc/late.conf"))
    assert [p.read_text() for p in saved] == ["too late\n"]
    assert not (world.etc() / "late.conf").exists()
