"""A machine's story, booted in QEMU: install, first boot, upgrade from inside, health rollback.

One disk image goes through every step in order.  tether installs OS 1 + kiosk 1 into a sysroot
from a repo served over HTTP on 127.0.0.1; the sysroot becomes an ext4 image, and QEMU boots it
from its default boot loader entry.  kiosk-report.service, shipped by the bundle, reports the
running system on the second serial port; depending on the plan the host passes, it first makes
an admin's edit in /etc and runs `tether upgrade` against the same server, then powers off.

1. first boot of OS 1 + kiosk 1: kernel arguments, the bundle's /etc file, timezone, hostname,
   /run/ostree-booted, the unit, tether's own view; then it upgrades itself to OS 2 + kiosk 2;
2. the new default boots: the drift rule held in the running system (a karg, a file and a unit
   removed from the bundle are gone, the added ones are there, the admin's edit stayed); then it
   upgrades to kiosk 3, whose health check fails;
3. kiosk 3 fails its boot: tether's health verdict makes kiosk 2 the default and reboots;
4. kiosk 2 boots again and knows what happened.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.boot import image as boot_image
from tests.boot.machine import FIGURES, Machine, install_machine
from tests.boot.qemu import BootTimeout, boot, boot_entries
from tests.world import World

pytestmark = [pytest.mark.boot, pytest.mark.slow]

GUEST_REPORT = Path(__file__).with_name("guest_report.py")
ADMIN_KARGS = ("root=LABEL=tether-root", "rw")

KIOSK = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = {kargs}

[system]
locale = "C.UTF-8"
timezone = "{timezone}"
hostname = "{hostname}"

[[file]]
path = "/etc/motd"
content = "{motd}\\n"

[[file]]
path = "/usr/libexec/kiosk-report"
source = "report.py"
mode = "0755"

[[file]]
path = "/etc/systemd/network/80-qemu.network"
source = "80-qemu.network"

[[unit]]
name = "systemd-networkd.service"
enabled = true

[[unit]]
name = "systemd-networkd-wait-online.service"
enabled = true

[[unit]]
name = "kiosk-report.service"
source = "units/kiosk-report.service"
enabled = true
{extra}
"""

SCREEN = """
[[file]]
path = "/etc/kiosk/screen.conf"
content = "hdmi\\n"

[[unit]]
name = "kiosk-screen.service"
source = "units/kiosk-screen.service"
enabled = true
"""

AUDIO = """
[[file]]
path = "/etc/kiosk/audio.conf"
content = "on\\n"

[[unit]]
name = "kiosk-audio.service"
source = "units/kiosk-audio.service"
enabled = true

[[file]]
path = "/etc/tether/health/required.d/10-kiosk-audio"
content = "#!/bin/sh\\ntest -f /etc/kiosk/audio.conf\\n"
mode = "0755"
"""

FAILING_CHECK = """
[[unit]]
name = "kiosk-check.service"
source = "units/kiosk-check.service"
enabled = true
"""

# QEMU's user network: the guest is 10.0.2.15, the host 10.0.2.2.
NETWORK = "[Match]\nName=en*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n"

REPORT_UNIT = """\
[Unit]
Description=Report this boot to the test host, then power off
Wants=network-online.target
After=network-online.target multi-user.target tether-health.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/libexec/kiosk-report
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
"""

ONESHOT_UNIT = """\
[Unit]
Description=Kiosk {what}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""

# Part of the boot's health, as a bundle declares a check: ordered before boot-complete.target
# and required by it.
CHECK_UNIT = """\
[Unit]
Description=Kiosk self-test
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo "kiosk self-test: no display found" >&2; exit 1'

[Install]
RequiredBy=boot-complete.target
"""


def publish_kiosk(world: World, version: str, kargs: str, timezone: str, extra: str) -> str:
    files = {
        "report.py": GUEST_REPORT.read_text(),
        "80-qemu.network": NETWORK,
        "units/kiosk-report.service": REPORT_UNIT,
        "units/kiosk-screen.service": ONESHOT_UNIT.format(what="screen"),
        "units/kiosk-audio.service": ONESHOT_UNIT.format(what="audio"),
        "units/kiosk-check.service": CHECK_UNIT,
    }
    manifest = KIOSK.format(
        version=version,
        kargs=kargs,
        timezone=timezone,
        hostname=f"kiosk-{version}",
        motd=f"kiosk {version}",
        extra=extra,
    )
    return world.publish_bundle("kiosk", manifest, files)


def publish_os(machine_world: World, base: boot_image.BootableOS) -> str:
    release = str(machine_world.os_version + 1)
    layer = boot_image.release_layer(machine_world.root / f"release-{release}", release)
    return boot_image.publish_release(machine_world, base, layer)


@pytest.fixture(scope="module")
def machine(
    tier_clock: None, bootable: boot_image.BootableOS, served_world: tuple[World, str]
) -> Iterator[Machine]:
    world, url = served_world
    started = time.monotonic()
    publish_os(world, bootable)
    publish_kiosk(world, "1", '["console=ttyS0,115200", "kiosk.screen=hdmi"]', "Europe/Madrid", SCREEN)
    FIGURES["publish OS 1 + kiosk 1"] = time.monotonic() - started
    machine = install_machine(world, url, "kiosk", *ADMIN_KARGS)
    machine.notes["base"] = bootable
    yield machine


def facts(report: dict[str, Any] | None) -> dict[str, Any]:
    assert report is not None, "the guest did not report"
    result: dict[str, Any] = report["facts"]
    return result


def kargs(cmdline: str) -> list[str]:
    return [word for word in cmdline.split() if not word.startswith("ostree=")]


def test_a_silent_guest_is_given_up_with_its_console(machine: Machine) -> None:
    # Too short a bound for any boot to report: the runner must kill QEMU and say why.
    started = time.monotonic()
    with pytest.raises(BootTimeout) as failure:
        boot(machine.image, machine.workdir / "boots", "silent", timeout=15, snapshot=True)
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert elapsed < 15 + 30, f"gave up after {elapsed:.0f} s"
    assert "did not report within 15 s; QEMU was killed" in message
    console = machine.workdir / "boots/silent.console.log"
    assert f"console ({console})" in message
    assert re.search(r"^\[ *\d+\.\d+\] ", message, re.MULTILINE), "the kernel's lines are in the message"
    assert not [pid for pid, cmd in _processes().items() if str(console) in cmd], "QEMU is gone"


def _processes() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return found


def test_first_boot_runs_the_installed_pair(machine: Machine) -> None:
    with machine.step("first boot"):
        publish_os(machine.world, machine.notes["base"])
        publish_kiosk(
            machine.world, "2", '["console=ttyS0,115200", "kiosk.audio=on"]', "Europe/Lisbon", AUDIO
        )
        first = machine.boot("1-installed", plan="edit,upgrade")
        assert first.ended == "poweroff", first.console_tail()
        seen = facts(first.report)
        machine.notes["first"] = first.report

        assert seen["ostree_booted"] is True
        assert kargs(seen["cmdline"]) == [*ADMIN_KARGS, "console=ttyS0,115200", "kiosk.screen=hdmi"]
        assert "ostree=/ostree/boot." in seen["cmdline"]
        assert seen["files"]["/etc/motd"] == "kiosk 1\n"
        assert seen["files"]["/etc/kiosk/screen.conf"] == "hdmi\n"
        assert seen["files"]["/usr/share/exampleos/release"] == "1\n"
        assert seen["localtime"] == "../usr/share/zoneinfo/Europe/Madrid"
        assert seen["hostname"] == "kiosk-1"
        report_unit = seen["units"]["kiosk-report.service"]
        assert report_unit["UnitFileState"] == "enabled"
        assert report_unit["ActiveState"] == "activating", "it is the unit running this report"
        assert seen["units"]["kiosk-screen.service"]["ActiveState"] == "active"
        # tether itself runs in the guest: converge early in the boot, the health verdict at its end
        for unit in ("tether-converge.service", "tether-health-check.service", "tether-health.service"):
            assert seen["units"][unit]["ActiveState"] == "active", (unit, seen["units"][unit])
        assert seen["units"]["boot-complete.target"]["ActiveState"] == "active"
        [deployment] = seen["deployments"]
        assert deployment["booted"] and deployment["default"]
        assert deployment["version"] == "1+kiosk.1"

        upgrade = first.report["upgrade"] if first.report else {}
        assert upgrade["exit"] == 0, upgrade
        assert "Upgraded from 1+kiosk.1 to 2+kiosk.2" in upgrade["stdout"], upgrade
        assert "2+kiosk.2" in boot_entries(machine.image)[0].title, "the new pair is the default entry"


def test_the_new_default_boots_and_the_drift_rule_held(machine: Machine) -> None:
    with machine.step("boot of the upgraded pair"):
        declared = '["console=ttyS0,115200", "kiosk.audio=on"]'
        publish_kiosk(machine.world, "3", declared, "Europe/Lisbon", AUDIO + FAILING_CHECK)
        second = machine.boot("2-upgraded", plan="upgrade")
        assert second.ended == "poweroff", second.console_tail()
        seen = facts(second.report)
        machine.notes["second"] = second.report

        # kernel arguments: the admin's stay, the dropped one is gone, the new one is appended
        assert kargs(seen["cmdline"]) == [*ADMIN_KARGS, "console=ttyS0,115200", "kiosk.audio=on"]
        # files: the removed one is gone, the added one is there, the admin's edit stayed
        assert seen["files"]["/etc/kiosk/screen.conf"] is None
        assert seen["files"]["/etc/kiosk/audio.conf"] == "on\n"
        assert seen["files"]["/etc/motd"] == "kiosk 2\n"
        assert seen["files"]["/etc/admin.conf"] == "edited on the running system\n"
        assert seen["files"]["/usr/share/exampleos/release"] == "2\n"
        assert seen["localtime"] == "../usr/share/zoneinfo/Europe/Lisbon"
        assert seen["hostname"] == "kiosk-2"
        # units: the removed one is not there at all, the added one ran
        assert seen["units"]["kiosk-screen.service"]["LoadState"] == "not-found"
        assert seen["units"]["kiosk-audio.service"]["ActiveState"] == "active"
        assert seen["units"]["tether-health-check.service"]["ActiveState"] == "active"
        new, old = seen["deployments"]
        assert new["booted"] and new["default"] and new["version"] == "2+kiosk.2"
        assert old["rollback"] and old["version"] == "1+kiosk.1"

        upgrade = second.report["upgrade"] if second.report else {}
        assert upgrade["exit"] == 0, upgrade
        assert "Upgraded from 2+kiosk.2 to 2+kiosk.3" in upgrade["stdout"], upgrade


def test_a_failed_health_check_rolls_back_to_the_previous_pair(machine: Machine) -> None:
    with machine.step("failed boot and rollback"):
        failed = machine.boot("3-failing-check")
        console = failed.console.read_text(errors="replace")
        assert failed.report is None, "the report unit must not run on a failed boot"
        assert failed.ended == "reboot", failed.console_tail()
        assert "Boot health: 2+kiosk.3 failed (kiosk-check.service" in console, failed.console_tail()
        assert "rolling back to 2+kiosk.2" in console
        assert "2+kiosk.2" in boot_entries(machine.image)[0].title, "the previous pair is the default again"

        again = machine.boot("4-rolled-back")
        assert again.ended == "poweroff", again.console_tail()
        seen = facts(again.report)
        machine.notes["fourth"] = again.report
        assert seen["files"]["/etc/kiosk/audio.conf"] == "on\n"
        assert seen["hostname"] == "kiosk-2"
        current, rollback = seen["deployments"]
        assert current["booted"] and current["default"] and current["version"] == "2+kiosk.2"
        assert rollback["version"] == "2+kiosk.3" and not rollback["booted"]
        health = json.loads(seen["files"]["/var/lib/tether/health.json"])
        outcomes = {d["version"]: d for d in health["deployments"].values()}
        assert outcomes["2+kiosk.3"]["status"] == "failed"
        assert "kiosk-check.service" in outcomes["2+kiosk.3"]["failed_units"]
        assert outcomes["2+kiosk.2"]["status"] == "good" and outcomes["2+kiosk.2"]["good_boots"] == 2
        [event] = health["events"]
        assert (event["event"], event["from"], event["to"]) == ("rollback", "2+kiosk.3", "2+kiosk.2")
