"""Booting a disk image in QEMU as its boot loader would, and reading what the guest reports.

There is no boot loader in the image: this module plays its part.  Before every boot it reads the
default entry of ``/boot/loader/entries`` from the image (the highest ``version``, as GRUB's
blscfg and systemd-boot sort them), extracts that entry's kernel and initramfs with ``debugfs``
(no mounts, no loop devices) and starts ``qemu-system-x86_64`` with them and the entry's options.
So a reboot is "QEMU exits, the next boot reads the entries again": a guest that changed its
default deployment boots into it next time, exactly as on hardware.

The guest reports on its second serial port (``/dev/ttyS1``, a file here) one JSON document
between two marker lines; its console (``ttyS0``) goes to another file.  A boot ends when QEMU
exits (power-off, or reboot under ``-no-reboot``); a boot that has not ended within its bound is
killed and raises `BootTimeout` with the console's tail and the path of the whole log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
REPORT_BEGIN = "TETHER-REPORT-BEGIN"
REPORT_END = "TETHER-REPORT-END"
# After the report is complete the guest powers off; give that a bound of its own.
POWEROFF_GRACE = 60.0
CONSOLE_TAIL_LINES = 60
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class BootError(AssertionError):
    """A boot did not go as the test needs; the message carries the console's tail."""


class BootTimeout(BootError):
    """The guest did not report and stop within the bound; QEMU was killed."""


@dataclass(frozen=True)
class BootEntry:
    """One boot loader entry (Boot Loader Specification type 1), as ostree writes them."""

    name: str
    title: str
    version: int
    linux: str
    initrd: str
    options: str

    @classmethod
    def parse(cls, name: str, text: str) -> BootEntry:
        keys: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key and not key.startswith("#"):
                keys[key] = value.strip()
        return cls(
            name=name,
            title=keys.get("title", ""),
            version=int(keys.get("version", "0")),
            linux=keys["linux"],
            initrd=keys["initrd"],
            options=keys.get("options", ""),
        )


@dataclass
class Boot:
    """What one boot produced."""

    name: str
    entry: BootEntry
    report: dict[str, Any] | None
    ended: str  # "poweroff", "reboot", or "exit N" when QEMU stopped for another reason
    seconds: float
    console: Path
    report_file: Path
    extras: dict[str, Any] = field(default_factory=dict)

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return console_tail(self.console, lines)


def _debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, errors="replace"
    )
    if proc.returncode != 0:
        raise BootError(f"debugfs -R {request!r} {image} failed: {proc.stderr.strip()}")
    return proc.stdout


def boot_entries(image: Path) -> list[BootEntry]:
    """The image's boot loader entries, default first."""
    listing = _debugfs(image, "ls -p /boot/loader/entries")
    # `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
    names = [
        fields[4]
        for fields in (line.strip().strip("/").split("/") for line in listing.splitlines())
        if len(fields) >= 5 and fields[4].endswith(".conf")
    ]
    entries = [BootEntry.parse(n, _debugfs(image, f"cat /boot/loader/entries/{n}")) for n in names]
    if not entries:
        raise BootError(f"no boot loader entries in {image}:/boot/loader/entries")
    return sorted(entries, key=lambda e: e.version, reverse=True)


def extract(image: Path, path: str, dest: Path) -> Path:
    """Copy ``path`` (absolute in the image) out of the image to ``dest``."""
    dest.unlink(missing_ok=True)
    _debugfs(image, f"dump {path} {dest}")
    if not dest.is_file() or dest.stat().st_size == 0:
        raise BootError(f"could not extract {path} from {image}")
    return dest


def console_tail(console: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last lines of a console log, without the terminal's colours and cursor moves."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    plain = [_ESCAPES.sub("", line).strip("\r") for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in plain if line.strip()][-lines:])


def read_report(report_file: Path) -> dict[str, Any] | None:
    """The JSON document between the markers, once the guest has written all of it."""
    try:
        text = report_file.read_text(errors="replace").replace("\r", "")
    except OSError:
        return None
    begin = text.rfind(REPORT_BEGIN + "\n")
    if begin < 0:
        return None
    end = text.find("\n" + REPORT_END, begin)
    if end < 0:
        return None
    document: dict[str, Any] = json.loads(text[begin + len(REPORT_BEGIN) + 1 : end])
    return document


def qemu_command(
    *,
    image: Path,
    kernel: Path,
    initrd: Path,
    append: str,
    console: Path,
    report_file: Path,
    network: bool,
    credentials: Mapping[str, str],
    memory_mib: int,
    snapshot: bool,
) -> list[str]:
    cmd = [
        QEMU,
        # KVM is not usable on the machines this runs on; -cpu max with TCG boots Debian's kernel
        # and udev (with its virtualisation extensions masked, udev fails).
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        str(min(2, os.cpu_count() or 1)),
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        # A reboot ends the boot: the next one reads the boot loader entries again.
        "-no-reboot",
        "-drive",
        # Guest flushes are not passed on: ostree syncs a lot, and the host's disk is not the
        # machine's (QEMU still writes everything to the file before it exits).
        f"file={image},if=virtio,format=raw,cache=unsafe",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-serial",
        f"file:{console}",
        "-serial",
        f"file:{report_file}",
    ]
    if snapshot:
        # Writes go to a temporary overlay: the image stays as it was.
        cmd.append("-snapshot")
    if network:
        cmd += ["-nic", "user,model=virtio-net-pci"]
    for name, value in credentials.items():
        # systemd (252+) imports these as system credentials: /run/credentials/@system/NAME.
        # QEMU option values escape commas by doubling them.
        string = f"io.systemd.credential:{name}={value}".replace(",", ",,")
        cmd += ["-smbios", f"type=11,value={string}"]
    return cmd


def boot(
    image: Path,
    workdir: Path,
    name: str,
    *,
    timeout: float,
    network: bool = True,
    credentials: Mapping[str, str] | None = None,
    memory_mib: int = 1536,
    snapshot: bool = False,
    grace: float = POWEROFF_GRACE,
) -> Boot:
    """Boot ``image`` from its default entry; return when QEMU exits.

    Raises `BootTimeout` if it has not exited within ``timeout`` seconds (or within ``grace``
    seconds of a complete report), and `BootError` if QEMU could not run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    entry = boot_entries(image)[0]
    # Paths in entries are relative to the file system holding /boot: the root one here.
    kernel = extract(image, f"/boot{entry.linux}", workdir / f"{name}.vmlinuz")
    initrd = extract(image, f"/boot{entry.initrd}", workdir / f"{name}.initrd")
    console = workdir / f"{name}.console.log"
    report_file = workdir / f"{name}.report.log"
    for path in (console, report_file):
        path.unlink(missing_ok=True)
    cmd = qemu_command(
        image=image,
        kernel=kernel,
        initrd=initrd,
        append=entry.options,
        console=console,
        report_file=report_file,
        network=network,
        credentials=credentials or {},
        memory_mib=memory_mib,
        snapshot=snapshot,
    )
    (workdir / f"{name}.qemu.cmd").write_text(shlex.join(cmd) + "\n")
    qemu_log = workdir / f"{name}.qemu.log"
    started = time.monotonic()
    with open(qemu_log, "wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = started + timeout
        report = None
        while process.poll() is None:
            now = time.monotonic()
            if report is None:
                report = read_report(report_file)
                if report is not None:
                    deadline = now + grace
            if now >= deadline:
                waited = f"within {grace:.0f} s of its report" if report else f"within {timeout:.0f} s"
                raise BootTimeout(_timeout_message(name, waited, report is not None, console, entry))
            time.sleep(0.5)
    finally:
        _stop(process)
    seconds = time.monotonic() - started
    report = read_report(report_file)
    if process.returncode != 0:
        raise BootError(
            f"boot {name}: QEMU exited with {process.returncode}:\n"
            f"{qemu_log.read_text(errors='replace')[-2000:]}\n--- console ({console}) ---\n"
            f"{console_tail(console)}"
        )
    return Boot(name, entry, report, _how_it_ended(console), seconds, console, report_file)


def _how_it_ended(console: Path) -> str:
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return "exit 0"
    # The kernel's last words (printed at emergency level, so even with `quiet`).
    restart, power = text.rfind("reboot: Restarting system"), text.rfind("reboot: Power down")
    if restart < 0 and power < 0:
        return "exit 0"
    return "reboot" if restart > power else "poweroff"


def _timeout_message(name: str, waited: str, reported: bool, console: Path, entry: BootEntry) -> str:
    what = f"reported but did not stop {waited}" if reported else f"did not report {waited}"
    return (
        f"boot {name}: the guest {what}; QEMU was killed.\n"
        f"entry: {entry.name} ({entry.title})\noptions: {entry.options}\n"
        f"--- last {CONSOLE_TAIL_LINES} lines of the console ({console}) ---\n{console_tail(console)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
