"""The boot runner without booting: a small ext4 image with boot loader entries, and a fake QEMU.

The fake QEMU is a script that plays one scenario on the serial files it is given: a guest that
reports and powers off, one that reboots, one that never reports, one that reports and hangs,
and a QEMU that refuses its arguments.  That covers entry selection, extraction with debugfs,
the report protocol, how a boot ended, and giving up with the console attached, in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.boot import qemu
from tests.boot.qemu import BootEntry, BootError, BootTimeout, boot, boot_entries, qemu_command, read_report

FAKE_QEMU = """\
import json, os, sys, time
argv = sys.argv[1:]
serials = [argv[i + 1].removeprefix("file:") for i, a in enumerate(argv) if a == "-serial"]
append = argv[argv.index("-append") + 1]
scenario = os.environ["FAKE_QEMU_SCENARIO"]
console = open(serials[0], "w")
def say(line):
    console.write(line + "\\r\\n"); console.flush()
say("\\x1b[0;32m[    0.000000] Linux version 6.1.0-fake\\x1b[0m")
say("[    0.000001] Command line: " + append)
if scenario == "refuse":
    print("qemu-system-x86_64: -smbios: Invalid parameter", file=sys.stderr); sys.exit(1)
if scenario in ("report", "hang-after-report"):
    document = json.dumps({"cmdline": append})
    with open(serials[1], "w") as report:
        report.write("TETHER-REPORT-BEGIN\\r\\n" + document + "\\r\\nTETHER-REPORT-END\\r\\n")
if scenario in ("silent", "hang-after-report"):
    time.sleep(600)
say("[    9.000000] reboot: " + ("Restarting system" if scenario == "reboot" else "Power down"))
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ext4 image laid out as ostree lays out /boot, with two deployments' entries."""
    root = tmp_path_factory.mktemp("image")
    tree = root / "tree"
    boot_dir = tree / "boot"
    for version, csum in ((1, "aaaa"), (2, "bbbb")):
        kernel_dir = boot_dir / "ostree" / f"os-{csum}"
        kernel_dir.mkdir(parents=True)
        (kernel_dir / "vmlinuz-6.1").write_bytes(f"kernel {csum}".encode())
        (kernel_dir / "initramfs-6.1.img").write_bytes(f"initramfs {csum}".encode())
        entries = boot_dir / "loader.1" / "entries"
        entries.mkdir(parents=True, exist_ok=True)
        (entries / f"ostree-{version}-os.conf").write_text(
            f"title OS {csum} (ostree:{2 - version})\nversion {version}\n"
            f"options root=LABEL=x rw console=ttyS0 ostree=/ostree/boot.1/os/{csum}/0\n"
            f"linux /ostree/os-{csum}/vmlinuz-6.1\ninitrd /ostree/os-{csum}/initramfs-6.1.img\n"
        )
    (boot_dir / "loader").symlink_to("loader.1")
    path = root / "disk.img"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(path)], check=True)
    return path


@dataclass
class FakeQemu:
    script: Path
    monkeypatch: pytest.MonkeyPatch

    def plays(self, scenario: str) -> None:
        self.monkeypatch.setenv("FAKE_QEMU_SCENARIO", scenario)

    def running(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if str(self.script) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeQemu:
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    monkeypatch.setattr(qemu, "QEMU", str(script))
    return FakeQemu(script, monkeypatch)


def test_entries_are_read_from_the_image_default_first(image: Path) -> None:
    entries = boot_entries(image)
    assert [e.version for e in entries] == [2, 1]
    assert entries[0].title == "OS bbbb (ostree:0)"
    assert entries[0].linux == "/ostree/os-bbbb/vmlinuz-6.1"
    assert "ostree=/ostree/boot.1/os/bbbb/0" in entries[0].options


def test_entry_parse_ignores_comments_and_keeps_option_spaces() -> None:
    text = "# written by ostree\ntitle  A B\nversion 3\noptions a=1  b\nlinux /k\ninitrd /i\n"
    entry = BootEntry.parse("x.conf", text)
    assert (entry.title, entry.version, entry.options) == ("A B", 3, "a=1  b")


def test_a_reporting_guest(image: Path, fake: FakeQemu, tmp_path: Path) -> None:
    fake.plays("report")
    result = boot(image, tmp_path / "boots", "one", timeout=30, credentials={"tether.plan": "edit,upgrade"})
    assert result.ended == "poweroff"
    assert result.report == {"cmdline": "root=LABEL=x rw console=ttyS0 ostree=/ostree/boot.1/os/bbbb/0"}
    assert (tmp_path / "boots/one.vmlinuz").read_bytes() == b"kernel bbbb", "the default entry's kernel"
    assert (tmp_path / "boots/one.initrd").read_bytes() == b"initramfs bbbb"
    command = (tmp_path / "boots/one.qemu.cmd").read_text()
    assert "type=11,value=io.systemd.credential:tether.plan=edit,,upgrade" in command, "commas doubled"


def test_a_rebooting_guest(image: Path, fake: FakeQemu, tmp_path: Path) -> None:
    fake.plays("reboot")
    result = boot(image, tmp_path, "two", timeout=30)
    assert result.ended == "reboot"
    assert result.report is None


def test_a_silent_guest_is_killed_with_its_console(image: Path, fake: FakeQemu, tmp_path: Path) -> None:
    fake.plays("silent")
    started = time.monotonic()
    with pytest.raises(BootTimeout) as failure:
        boot(image, tmp_path, "quiet", timeout=2)
    assert time.monotonic() - started < 15
    message = str(failure.value)
    assert "boot quiet: the guest did not report within 2 s; QEMU was killed." in message
    assert "entry: ostree-2-os.conf (OS bbbb (ostree:0))" in message
    assert "[    0.000000] Linux version 6.1.0-fake\n" in message, "console without colours or CRs"
    assert f"console ({tmp_path / 'quiet.console.log'})" in message
    assert not fake.running()


def test_a_guest_that_reports_but_does_not_stop(image: Path, fake: FakeQemu, tmp_path: Path) -> None:
    fake.plays("hang-after-report")
    with pytest.raises(BootTimeout, match="reported but did not stop within 1 s of its report"):
        boot(image, tmp_path, "stuck", timeout=60, grace=1)
    assert not fake.running()


def test_qemu_refusing_its_arguments(image: Path, fake: FakeQemu, tmp_path: Path) -> None:
    fake.plays("refuse")
    refused = "QEMU exited with 1:\nqemu-system-x86_64: -smbios: Invalid parameter"
    with pytest.raises(BootError, match=refused):
        boot(image, tmp_path, "bad", timeout=30)


def test_read_report_waits_for_the_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "report.log"
    path.write_text("noise\r\nTETHER-REPORT-BEGIN\r\n{\"a\": ")
    assert read_report(path) is None
    path.write_text("noise\r\nTETHER-REPORT-BEGIN\r\n" + json.dumps({"a": 1}) + "\r\nTETHER-REPORT-END\r\n")
    assert read_report(path) == {"a": 1}


def test_the_qemu_command(tmp_path: Path) -> None:
    cmd = qemu_command(
        image=tmp_path / "disk.img",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        append="root=LABEL=x rw",
        console=tmp_path / "c",
        report_file=tmp_path / "r",
        network=False,
        credentials={},
        memory_mib=512,
        snapshot=True,
    )
    joined = " ".join(cmd)
    assert "-accel tcg,thread=multi -cpu max" in joined
    assert "-no-reboot" in cmd and "-snapshot" in cmd and "-nic" not in cmd
    assert cmd[cmd.index("-append") + 1] == "root=LABEL=x rw"
    serials = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-serial"]
    assert serials == [f"file:{tmp_path}/c", f"file:{tmp_path}/r"]

