#!/usr/bin/python3
"""Runs inside the booted guest: report what the running system looks like, act, power off.

Shipped by the test bundles as /usr/libexec/kiosk-report and started by their kiosk-report.service
once the boot is complete.  It reads its plan from the system credential ``tether.plan`` (set by
the host through SMBIOS): a comma-separated list of ``edit`` (make an admin's edit in /etc, as a
person would on the running machine) and ``upgrade`` (run ``tether upgrade``).  It writes one JSON
document between marker lines to /dev/ttyS1 (the host's report file) and powers the machine off.
Standard library only: it runs on the guest's own python3.
"""

from __future__ import annotations

import json
import os
import subprocess
import termios
import time
import tty
from pathlib import Path
from typing import Any

REPORT_PORT = "/dev/ttyS1"
PLAN_CREDENTIAL = Path("/run/credentials/@system/tether.plan")
FILES = (
    "/etc/motd",
    "/etc/kiosk/screen.conf",
    "/etc/kiosk/audio.conf",
    "/etc/admin.conf",
    "/etc/timezone",
    "/usr/share/exampleos/release",
    "/var/lib/tether/health.json",
)
UNITS = (
    "kiosk-report.service",
    "kiosk-screen.service",
    "kiosk-audio.service",
    "kiosk-check.service",
    "systemd-networkd.service",
    "tether-converge.service",
    "tether-health-check.service",
    "tether-health.service",
    "boot-complete.target",
)
ADMIN_EDIT = "edited on the running system\n"


def command(*argv: str, timeout: float = 120) -> dict[str, Any]:
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"exit": None, "stdout": "", "stderr": str(e), "seconds": time.monotonic() - started}
    return {
        "exit": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "seconds": round(time.monotonic() - started, 1),
    }


def read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def show(*units: str, properties: str) -> list[dict[str, str]]:
    """`systemctl show` of the manager (no unit) or of units, one dict each, in order."""
    shown = command("systemctl", "show", f"--property={properties}", *units)["stdout"]
    return [
        dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        for block in shown.strip().split("\n\n")
    ]


def unit_states() -> dict[str, dict[str, str]]:
    properties = "Id,LoadState,ActiveState,SubState,UnitFileState,Result,ActiveEnterTimestampMonotonic"
    return dict(zip(UNITS, show(*UNITS, properties=properties), strict=True))


def boot_timeline() -> dict[str, float]:
    """Seconds since the kernel started: when the initrd and the real root's systemd began."""
    [manager] = show(properties="InitRDTimestampMonotonic,UserspaceTimestampMonotonic")
    return {key.removesuffix("TimestampMonotonic"): int(value) / 1e6 for key, value in manager.items()}


def facts() -> dict[str, Any]:
    status = command("tether", "status", "--json")
    try:
        deployments = json.loads(status["stdout"])["deployments"]
    except ValueError:
        deployments = None
    return {
        "cmdline": read("/proc/cmdline"),
        "hostname": (read("/proc/sys/kernel/hostname") or "").strip(),
        "localtime": os.readlink("/etc/localtime") if os.path.islink("/etc/localtime") else None,
        "ostree_booted": os.path.exists("/run/ostree-booted"),
        "files": {path: read(path) for path in FILES},
        "units": unit_states(),
        "timeline": boot_timeline(),
        "failed_units": command("systemctl", "list-units", "--failed", "--plain", "--no-legend")["stdout"],
        "uptime": read("/proc/uptime"),
        "deployments": deployments,
        "tether_status": status if deployments is None else {"exit": status["exit"]},
    }


def send(document: dict[str, Any]) -> None:
    fd = os.open(REPORT_PORT, os.O_WRONLY | os.O_NOCTTY)
    try:
        # Raw: no newline translation on the way to the host's file.
        tty.setraw(fd)
        attributes = termios.tcgetattr(fd)
        attributes[4] = attributes[5] = termios.B115200
        termios.tcsetattr(fd, termios.TCSANOW, attributes)
        payload = f"TETHER-REPORT-BEGIN\n{json.dumps(document, sort_keys=True)}\nTETHER-REPORT-END\n"
        os.write(fd, payload.encode())
        termios.tcdrain(fd)
    finally:
        os.close(fd)


def main() -> None:
    plan = [p for p in (read(str(PLAN_CREDENTIAL)) or "").strip().split(",") if p]
    started = time.monotonic()
    document: dict[str, Any] = {"plan": plan, "facts": facts()}
    document["facts_seconds"] = round(time.monotonic() - started, 1)
    if "edit" in plan:
        Path("/etc/admin.conf").write_text(ADMIN_EDIT)
    if "upgrade" in plan:
        document["upgrade"] = command("tether", "upgrade", timeout=900)
    send(document)
    subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)


if __name__ == "__main__":
    main()
