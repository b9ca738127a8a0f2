"""install → upgrade → rollback end to end on real ostree sysroots, with the drift rule.

Every test publishes real OS commits and bundles into an archive repo, installs
into a sysroot directory and inspects the deployments libostree wrote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.world import OS_REF, World, tether

KIOSK = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = {kargs}

[system]
timezone = "Europe/Madrid"
hostname = "kiosk"

[sysctl]
"vm.swappiness" = "10"

{extra}
"""

MOTD = """
[[file]]
path = "/etc/motd"
content = "Welcome to the kiosk\\n"
"""

KIOSK_UNIT = """
[[unit]]
name = "kiosk.service"
source = "units/kiosk.service"
enabled = true
"""

UNIT_FILE = (
    "[Unit]\nDescription=Kiosk\n[Service]\nExecStart=/usr/bin/true\n[Install]\nWantedBy=multi-user.target\n"
)

HOOK = """
[[hook]]
stage = "deploy"
run = "hooks/setup.sh"
"""


def kiosk(
    world: World,
    version: str,
    kargs: str = '["quiet"]',
    extra: str = "",
    files: dict[str, str] | None = None,
    bind: list[str] | None = None,
) -> str:
    files = {"units/kiosk.service": UNIT_FILE, **(files or {})}
    return world.publish_bundle(
        "kiosk", KIOSK.format(version=version, kargs=kargs, extra=extra), files, bind=bind
    )


def test_install_upgrade_rollback(world: World) -> None:
    os1 = world.publish_os()
    kiosk(world, "1", extra=MOTD + KIOSK_UNIT)
    result = world.install("kiosk", "--karg", "root=LABEL=root")
    assert result.code == 0, result.err

    [d] = world.status()
    assert d["default"] and d["os_commit"] == os1
    assert d["bundle"]["name"] == "kiosk" and d["bundle"]["version"] == "1"
    assert d["kernel_arguments"] == ["root=LABEL=root", "quiet"]
    etc = world.etc()
    assert (etc / "motd").read_text() == "Welcome to the kiosk\n"
    assert (etc / "hostname").read_text() == "kiosk\n"
    assert str((etc / "localtime").readlink()) == "../usr/share/zoneinfo/Europe/Madrid"
    wants = etc / "systemd/system/multi-user.target.wants"
    assert str((wants / "kiosk.service").readlink()) == "/usr/lib/systemd/system/kiosk.service"
    sysctl = world.deployment_root() / "usr/lib/sysctl.d/90-tether-kiosk.conf"
    assert "vm.swappiness = 10" in sysctl.read_text()
    assert (world.deployment_root() / "usr/share/tether/bundle/tether.toml").is_file()
    entries = list((world.sysroot / "boot/loader/entries").glob("*.conf"))
    assert len(entries) == 1 and "quiet" in entries[0].read_text()

    os2 = world.publish_os()
    kiosk(world, "2", extra=MOTD + KIOSK_UNIT)
    result = world.run("upgrade")
    assert result.code == 0, result.err
    new, old = world.status()
    assert new["default"] and new["os_commit"] == os2 and new["bundle"]["version"] == "2"
    assert old["rollback"] and old["os_commit"] == os1
    assert len(list((world.sysroot / "boot/loader/entries").glob("*.conf"))) == 2

    result = world.run("rollback")
    assert result.code == 0, result.err
    first, second = world.status()
    assert first["os_commit"] == os1 and first["default"]
    assert second["os_commit"] == os2


def test_drift_rule_for_tree_content_and_kargs(world: World) -> None:
    world.publish_os()
    kiosk(world, "1", kargs='["quiet", "console=ttyS0"]', extra=MOTD + KIOSK_UNIT)
    assert world.install("kiosk", "--karg", "root=LABEL=root").code == 0
    etc = world.etc()
    # the admin's own edits on the running system
    (etc / "admin.conf").write_text("mine\n")
    (etc / "hostname").write_text("edited-by-admin\n")
    ostree_kargs = world.status()[0]["kernel_arguments"]
    assert ostree_kargs == ["root=LABEL=root", "quiet", "console=ttyS0"]

    world.publish_os()
    # the file, the unit and one karg are removed from the bundle
    kiosk(world, "2", kargs='["quiet"]')
    result = world.run("upgrade")
    assert result.code == 0, result.err
    etc = world.etc()
    assert (etc / "motd").read_text() == "Tether Test OS 2\n", "the OS default is back"
    assert not (etc / "systemd/system/multi-user.target.wants/kiosk.service").exists()
    assert not (world.deployment_root() / "usr/lib/systemd/system/kiosk.service").exists()
    assert world.status()[0]["kernel_arguments"] == ["root=LABEL=root", "quiet"]
    # what the admin did stays
    assert (etc / "admin.conf").read_text() == "mine\n"
    assert (etc / "hostname").read_text() == "edited-by-admin\n"


def test_admin_karg_declared_later_by_bundle_stays_when_dropped(world: World) -> None:
    world.publish_os()
    kiosk(world, "1", kargs="[]")
    assert world.install("kiosk", "--karg", "nosmt").code == 0
    world.publish_os()
    kiosk(world, "2", kargs='["nosmt", "quiet"]')
    assert world.run("upgrade").code == 0
    assert world.status()[0]["kernel_arguments"] == ["nosmt", "quiet"]
    world.publish_os()
    kiosk(world, "3", kargs="[]")
    assert world.run("upgrade").code == 0
    assert world.status()[0]["kernel_arguments"] == ["nosmt"], "nosmt was the admin's, quiet was tether's"


def test_second_upgrade_changes_nothing(world: World) -> None:
    world.publish_os()
    kiosk(world, "1", extra=HOOK, files={"hooks/setup.sh": "#!/bin/sh\necho ran >> /etc/hook-runs\n"})
    assert world.install().code == 0
    world.publish_os()
    kiosk(world, "2", extra=HOOK, files={"hooks/setup.sh": "#!/bin/sh\necho ran >> /etc/hook-runs\n"})
    assert world.run("upgrade").code == 0
    before = world.snapshot()
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert "No update available" in result.out
    assert world.snapshot() == before
    assert world.run("upgrade", "--check").code == 77


def test_os_ahead_of_its_bundle_is_not_deployed(world: World) -> None:
    os1 = world.publish_os()
    kiosk(world, "1", bind=[os1])
    assert world.install().code == 0
    before = world.snapshot()
    os2 = world.publish_os()  # the OS ref moves; no bundle is bound to it yet
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert "not bound to yet" in result.out + result.err
    assert world.snapshot() == before
    assert world.status()[0]["os_commit"] == os1 != os2
    check = world.run("upgrade", "--check")
    assert check.code == 77, check


def test_bundle_bound_to_nothing_found_exits_3(world: World, tmp_path: Path) -> None:
    os1 = world.publish_os()
    kiosk(world, "1", bind=[os1])
    assert world.install().code == 0
    before = world.snapshot()
    # a bundle bound only to an OS commit the remote does not have
    other = World(tmp_path / "elsewhere")
    foreign = other.publish_os(extra={"usr/share/foreign": b"x"})
    subprocess.run(["ostree", f"--repo={world.repo}", "pull-local", str(other.repo), foreign], check=True)
    kiosk(world, "2", bind=[foreign])
    subprocess.run(["ostree", f"--repo={world.repo}", "prune", "--refs-only", "--depth=0"], check=True)
    gone = subprocess.run(["ostree", f"--repo={world.repo}", "show", foreign], capture_output=True)
    assert gone.returncode != 0, "the bound OS commit is not on the remote"
    result = world.run("upgrade")
    assert result.code == 3, result
    assert world.snapshot() == before


def test_failed_deploy_hook_leaves_the_sysroot_as_it_was(world: World) -> None:
    world.publish_os()
    kiosk(world, "1", extra=MOTD)
    assert world.install().code == 0
    before = world.snapshot()
    world.publish_os()
    kiosk(world, "2", extra=HOOK, files={"hooks/setup.sh": "#!/bin/sh\necho half > /etc/half-done\nexit 3\n"})
    result = world.run("upgrade")
    assert result.code == 1
    assert "hooks/setup.sh" in result.err and "exited with code 3" in result.err
    assert "Traceback" not in result.err
    assert world.snapshot() == before
    deploy_dir = world.sysroot / "ostree/deploy/exampleos/deploy"
    assert len([p for p in deploy_dir.iterdir() if p.is_dir()]) == 1, (
        "the new deployment directory is removed"
    )


def test_crash_leftover_deployment_is_cleaned_by_next_run(world: World) -> None:
    world.publish_os()
    kiosk(world, "1")
    assert world.install().code == 0
    deploy_dir = world.sysroot / "ostree/deploy/exampleos/deploy"
    leftover = deploy_dir / f"{'0' * 64}.0"
    leftover.mkdir()
    (deploy_dir / f"{'0' * 64}.0.origin").write_text("[origin]\n")
    world.publish_os()
    kiosk(world, "2")
    assert world.run("upgrade").code == 0
    assert not leftover.exists()
    assert not (deploy_dir / f"{'0' * 64}.0.origin").exists()


def test_plain_ostree_admin_upgrade_refuses(world: World) -> None:
    world.publish_os()
    kiosk(world, "1")
    assert world.install().code == 0
    result = subprocess.run(
        ["ostree", "admin", "upgrade", f"--sysroot={world.sysroot}", "--os=exampleos"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "tether" in result.stderr


def test_switch_to_another_product(world: World) -> None:
    world.publish_os()
    kiosk(world, "1", extra=MOTD)
    world.publish_bundle(
        "signage",
        """
        [bundle]
        name = "signage"
        version = "1"
        os-ref = "exampleos/x86_64/stable"
        [system]
        hostname = "signage"
        """,
    )
    assert world.install("kiosk").code == 0
    result = world.run("switch", "exampleos:exampleos/x86_64/signage")
    assert result.code == 0, result.err
    new = world.status()[0]
    assert new["bundle"]["name"] == "signage"
    assert (world.etc() / "hostname").read_text() == "signage\n"
    assert (world.etc() / "motd").read_text() == "Tether Test OS 1\n"
    assert world.run("upgrade").code == 0
    assert world.status()[0]["bundle"]["name"] == "signage", "upgrade follows the switched ref"


def test_install_over_http(world: World, http_server) -> None:  # type: ignore[no-untyped-def]
    world.publish_os()
    kiosk(world, "1", extra=MOTD)
    world.url = http_server(world.repo)
    result = world.install()
    assert result.code == 0, result.err
    assert (world.etc() / "motd").read_text() == "Welcome to the kiosk\n"
    world.publish_os()
    kiosk(world, "2")
    assert world.run("upgrade").code == 0
    assert world.status()[0]["bundle"]["version"] == "2"


def test_compose_is_deterministic(world: World, tmp_path: Path) -> None:
    os1 = world.publish_os()
    bundle = kiosk(world, "1", extra=MOTD + KIOSK_UNIT)
    first = tether("compose", "--repo", world.repo, "--os", os1, "--bundle", bundle)
    again = tether("compose", "--repo", world.repo, "--os", os1, "--bundle", bundle)
    assert first.out.split()[-1] == again.out.split()[-1]
    assert again.out.startswith("cached")
    # a second repository with the same inputs gives the same checksum
    mirror = tmp_path / "mirror"
    subprocess.run(["ostree", f"--repo={mirror}", "init", "--mode=archive"], check=True)
    for rev in (os1, bundle):
        subprocess.run(["ostree", f"--repo={mirror}", "pull-local", str(world.repo), rev], check=True)
    other = tether("compose", "--repo", mirror, "--os", os1, "--bundle", bundle)
    assert other.out.startswith("composed")
    assert other.out.split()[-1] == first.out.split()[-1]
    subprocess.run(["ostree", f"--repo={mirror}", "fsck", "--quiet"], check=True)


def test_install_refuses_without_a_gpg_choice(world: World) -> None:
    world.publish_os()
    kiosk(world, "1")
    result = world.run(
        "install",
        "--stateroot",
        "exampleos",
        "--remote",
        f"exampleos={world.remote_url}",
        "--bundle",
        "exampleos:exampleos/x86_64/kiosk",
    )
    assert result.code == 2
    assert "--no-gpg-verify" in result.err
    assert not world.sysroot.exists()


def test_host_options_before_or_after_the_command(world: World) -> None:
    world.publish_os()
    kiosk(world, "1")
    assert world.install().code == 0
    before = tether("--sysroot", world.sysroot, "status", "--json")
    after = tether("status", "--json", "--sysroot", world.sysroot)
    assert before.code == after.code == 0
    assert before.out == after.out


@pytest.mark.parametrize("ref", [OS_REF])
def test_timezone_missing_from_the_os_is_an_error(world: World, ref: str) -> None:
    world.publish_os()
    world.publish_bundle(
        "tz",
        """
        [bundle]
        name = "tz"
        version = "1"
        os-ref = "exampleos/x86_64/stable"
        [system]
        timezone = "Mars/Olympus_Mons"
        """,
    )
    result = world.install("tz")
    assert result.code == 2, result
    assert "tether.toml:7:system.timezone" in result.err
    assert "Mars/Olympus_Mons" in result.err
