"""Hostile and broken bundles, end to end: each is refused with a clear error, or contained.

Every case publishes a bad version 2 of a product whose version 1 is installed,
then runs what a vendor and a machine would: `tether bundle build`, and
`tether upgrade`. Manifest-level cases must be refused by `bundle build`
(exit 2); the same directory committed without `bundle build` (a compromised
or careless build pipeline) must be refused again by the machine (exit 2).
Cases that only the OS tree can judge are refused at compose (exit 2). Steps
that fail, hang, fork-bomb, or attack the host fail the upgrade (exit 1) or
are contained by the sandbox. Whatever is refused leaves the sysroot as it was
(`World.snapshot()`), with no traceback; the repository passes `ostree fsck`.

Every hostile hook starts with a preamble that exits at once unless it runs
inside the sandbox (the test OS's os-release, a fresh pid namespace), so a
broken sandbox can never turn one of these scripts loose on the test host.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ostree_trees import synthetic_tree
from tests.reliability import fsck, tmpfs
from tests.world import OS_REF, Result, World, add_busybox, tether, write_bundle
from tether.compose import (
    KEY_BUNDLE_NAME,
    KEY_BUNDLE_REF,
    KEY_BUNDLE_VERSION,
    KEY_KARGS,
    KEY_OS_COMMITS,
    KEY_OS_REF,
)
from tether.edge import cgroup
from tether.edge.ostree import OstreeError, Repo

BUNDLE_REF = "exampleos/x86_64/kiosk"

HEADER = """\
[bundle]
name = "kiosk"
version = "2"
os-ref = "exampleos/x86_64/stable"
"""

# Refuse to do anything unless inside the sandbox: the test OS, a fresh pid namespace.
PREAMBLE = """#!/bin/sh
grep -q "Tether Test OS" /usr/lib/os-release || exit 90
[ "$(cat /proc/1/comm)" = bwrap ] || exit 91
[ $$ -lt 100 ] || exit 92
"""

EXTRA_APPLETS = ("nc", "mount", "mknod")


def hook(
    script: str, *, timeout: str = "30s", network: bool = False, stage: str = "deploy"
) -> dict[str, Any]:
    """The manifest and files of a bundle with one hook running `script` after the preamble."""
    manifest = f"""
[[hook]]
stage = "{stage}"
run = "hooks/hostile.sh"
timeout = "{timeout}"
network = {"true" if network else "false"}
"""
    return {"manifest": HEADER + manifest, "files": {"hooks/hostile.sh": PREAMBLE + script}}


@dataclass(frozen=True)
class Case:
    kind: str
    # "build": refused by `bundle build` (and by the machine when committed anyway);
    # "compose": refused at install/upgrade by checks against the OS tree;
    # "step": a step fails, the upgrade fails and nothing changed;
    # "contained": the upgrade succeeds, the attack had no effect outside the new /etc.
    refused_by: str
    message: str  # a substring of the error
    manifest: str | bytes = HEADER
    files: dict[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None
    committable: bool = True  # ostree itself can commit the directory

    @property
    def code(self) -> int:
        return {"build": 2, "compose": 2, "step": 1, "contained": 0}[self.refused_by]


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    def prepare(bundle: Path) -> None:
        path = bundle / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    return prepare


def _special(name: str, mode: int, device: int = 0) -> Callable[[Path], None]:
    def prepare(bundle: Path) -> None:
        os.mknod(bundle / name, mode | 0o600, device)

    return prepare


def _chmod(name: str, mode: int) -> Callable[[Path], None]:
    def prepare(bundle: Path) -> None:
        (bundle / name).chmod(mode)

    return prepare


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def prepare(bundle: Path) -> None:
        with open(bundle / name, "wb") as stream:
            stream.truncate(size)

    return prepare


def _replace_manifest(prepare: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(bundle: Path) -> None:
        (bundle / "tether.toml").unlink()
        prepare(bundle)

    return run


MOTD_FROM = '\n[[file]]\npath = "/etc/motd"\nsource = "{source}"\n'

CASES = [
    # --- refused by `bundle build`, and by the machine when committed anyway
    Case("path traversal in path", "build", "'..'",
         HEADER + '\n[[file]]\npath = "/etc/../usr/bin/evil"\ncontent = "x"\n'),
    Case("path traversal in source", "build", "'..'", HEADER + MOTD_FROM.format(source="../../etc/shadow")),
    Case("absolute source", "build", "must be relative", HEADER + MOTD_FROM.format(source="/etc/shadow")),
    Case("source symlink leading out of the bundle", "build", "outside the bundle",
         HEADER + MOTD_FROM.format(source="files/motd"), prepare=_symlink("files/motd", "/etc/shadow")),
    Case("unused symlink leading out of the bundle", "build", "outside the bundle",
         prepare=_symlink("escape", "../../../../../../..")),
    Case("hook script is a symlink out of the bundle", "build", "outside the bundle",
         HEADER + '\n[[hook]]\nstage = "deploy"\nrun = "hooks/evil.sh"\n',
         prepare=_symlink("hooks/evil.sh", "/bin/sh")),
    Case("manifest is a symlink to a host file", "build", "outside the bundle",
         prepare=_replace_manifest(_symlink("tether.toml", "/etc/passwd"))),
    Case("device node in the bundle", "build", "character device",
         prepare=_special("console", stat.S_IFCHR, os.makedev(1, 3)), committable=False),
    Case("fifo in the bundle", "build", "a fifo", prepare=_special("pipe", stat.S_IFIFO), committable=False),
    Case("manifest is a fifo", "build", "a fifo",
         prepare=_replace_manifest(_special("tether.toml", stat.S_IFIFO)), committable=False),
    Case("undeclared setuid bit", "build", "setuid",
         files={"files/tool": "#!/bin/sh\n"}, prepare=_chmod("files/tool", 0o4755)),
    Case("undeclared setgid bit", "build", "setgid",
         files={"files/tool": "#!/bin/sh\n"}, prepare=_chmod("files/tool", 0o2755)),
    Case("file larger than 64 MiB", "build", "larger than 64 MiB", prepare=_sparse("blob", (64 << 20) + 1)),
    Case("bundle larger than its max-size", "build", "larger than 1K",
         HEADER + 'max-size = "1K"\n', files={"data": "x" * 2048}),
    Case("absurd size", "build", "invalid", HEADER + 'max-size = "99999999999999999999999T"\n'),
    Case("absurd duration", "build", "invalid duration",
         HEADER + '\n[[hook]]\nstage = "deploy"\nrun = "h.sh"\ntimeout = "99999999999999999999h"\n',
         files={"h.sh": "#!/bin/sh\n"}),
    Case("duplicate paths", "build", "already declared",
         HEADER + '\n[[file]]\npath = "/etc/motd"\ncontent = "a"\n'
         '\n[[file]]\npath = "/etc/motd"\ncontent = "b"\n'),
    Case("conflicting resources", "build", "declared as a file",
         HEADER + '\n[[file]]\npath = "/etc/kiosk"\ncontent = "a"\n'
         '\n[[directory]]\npath = "/etc/kiosk/conf.d"\n'),
    Case("duplicate unit", "build", "already declared",
         HEADER + '\n[[unit]]\nname = "sshd.service"\nenabled = true\n'
         '\n[[unit]]\nname = "sshd.service"\nenabled = false\n'),
    Case("invalid UTF-8 manifest", "build", "not UTF-8", HEADER.encode() + b'\n# caf\xe9\n'),
    Case("binary garbage as manifest", "build", "tether.toml",
         bytes(range(256)) * 16 + b"\x00\xff\xfe"),
    Case("deeply nested TOML", "build", "nested too deeply", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    Case("manifest larger than 64 MiB", "build", "larger than 64 MiB",
         prepare=_replace_manifest(_sparse("tether.toml", (64 << 20) + 1))),
    Case("unknown key", "build", "unknown key", HEADER + 'nmae = "typo"\n'),
    # --- refused at compose: only the OS tree can tell
    Case("timezone the OS lacks", "compose", "Mars/Olympus_Mons",
         HEADER + '\n[system]\ntimezone = "Mars/Olympus_Mons"\n'),
    Case("unit the OS lacks", "compose", "does not ship it",
         HEADER + '\n[[unit]]\nname = "nonexistent.service"\nenabled = true\n'),
    Case("owner the OS lacks", "compose", "unknown user",
         HEADER + '\n[[file]]\npath = "/etc/kiosk.conf"\ncontent = "x"\nowner = "mallory"\n'),
    Case("file below a symlink of the OS tree", "compose", "not a directory",
         HEADER + '\n[[file]]\npath = "/etc/systemd/system/multi-user.target.wants/sshd.service/evil"\n'
         'content = "x"\n'),
    # --- steps: fail cleanly, or are contained
    Case("hook that fails", "step", "exited with code 3", **hook("echo half > /etc/half\nexit 3\n")),
    Case("hook that hangs past its timeout", "step", "timed out after 1 s",
         **hook("echo started > /etc/started\nsleep 600\n", timeout="1s")),
    Case("compose hook that fails", "step", "exited with code 4", **hook("exit 4\n", stage="compose")),
    Case("hook writing to /usr", "step", "Read-only file system", **hook("echo evil > /usr/bin/evil\n")),
    Case("hook writing to /sysroot", "step", "Read-only file system",
         **hook("mkdir /sysroot/ostree-evil\n")),
    Case("hook writing to /boot", "step", "Read-only file system", **hook("echo evil > /boot/evil\n")),
    Case("hook writing to /var", "step", "Read-only file system", **hook("echo evil > /var/evil\n")),
    Case("hook making a device node", "step", "Operation not permitted",
         **hook("mknod /etc/sda b 8 0\n")),
    Case("hook mounting over /usr", "step", "mount: permission denied",
         **hook("mount -t tmpfs none /usr\n")),
    Case("hook killing every process it can see", "contained", "",
         **hook("kill -9 -1\nkill -9 1\nsleep 0.2\n")),
    Case("hook reaching the host through /proc", "contained", "",
         **hook("for p in /proc/1/root /proc/self/root /proc/$$/root; do\n"
                "  echo escaped > $p/../../../../tmp/tether-hostile-canary 2>/dev/null\n"
                "done\n"
                "echo escaped > /tmp/tether-hostile-canary\n"
                "echo escaped > /run/tether-hostile-canary\nexit 0\n")),
]


@pytest.fixture
def fast_world(tmp_path: Path) -> Iterator[World]:
    with tmpfs(tmp_path / "tmpfs", "1G") as root:
        yield World(root)


def _os_tree(world: World, version: int) -> Path:
    tree = add_busybox(synthetic_tree(world.root / f"os-tree-{version}", version=str(version)))
    for applet in EXTRA_APPLETS:
        (tree / "usr/bin" / applet).symlink_to("busybox")
    return tree


@pytest.fixture
def installed(fast_world: World) -> World:
    world = fast_world
    world.publish_os(tree=_os_tree(world, 1))
    world.publish_bundle("kiosk", HEADER.replace('"2"', '"1"'))
    result = world.install()
    assert result.code == 0, result.err
    return world


def _write_case(world: World, case: Case) -> Path:
    directory = world.root / "bundles" / case.kind.replace(" ", "-").replace("/", "")
    write_bundle(directory, "", case.files)
    if isinstance(case.manifest, bytes):
        (directory / "tether.toml").write_bytes(case.manifest)
    else:
        (directory / "tether.toml").write_text(case.manifest)
    if case.prepare is not None:
        case.prepare(directory)
    return directory


def _build(world: World, directory: Path, os_commit: str) -> Result:
    repo = world.repo
    return tether("bundle", "build", directory, "--repo", repo, "--ref", BUNDLE_REF, "--bind", os_commit)


def _commit_without_build(world: World, directory: Path, os_commit: str) -> None:
    """What a compromised build pipeline could publish: no validation, modes and owners as they are."""
    repo = Repo(world.repo)
    repo.commit_directory(
        directory,
        ref=BUNDLE_REF,
        parent=repo.resolve(BUNDLE_REF),
        subject="kiosk 2",
        metadata={
            "version": "2",
            KEY_OS_COMMITS: [os_commit],
            KEY_OS_REF: OS_REF,
            KEY_BUNDLE_NAME: "kiosk",
            KEY_BUNDLE_VERSION: "2",
            KEY_BUNDLE_REF: BUNDLE_REF,
            KEY_KARGS: [],
        },
        timestamp=1_800_000_000,
    )
    repo.regenerate_summary()


def _assert_refused(world: World, result: Result, before: dict[str, object], case: Case) -> None:
    code, err = result.code, result.err
    assert code == case.code, f"{case.kind}: exit {code}, expected {case.code}:\n{err}"
    assert case.message in err, f"{case.kind}: {case.message!r} not in:\n{err}"
    assert "Traceback" not in err
    assert world.snapshot() == before, f"{case.kind}: the sysroot changed"


@pytest.fixture
def small_pids_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "PIDS_MAX", 64)


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_hostile_bundle(installed: World, case: Case, small_pids_limit: None) -> None:
    world = installed
    before = world.snapshot()
    refs_before = Repo(world.repo).refs()
    os2 = world.publish_os(tree=_os_tree(world, 2))
    directory = _write_case(world, case)

    build = _build(world, directory, os2)
    if case.refused_by == "build":
        assert build.code == 2, f"{case.kind}: bundle build gave {build.code}:\n{build.err}"
        assert case.message in build.err, build.err
        assert "Traceback" not in build.err
        assert Repo(world.repo).refs()[BUNDLE_REF] == refs_before[BUNDLE_REF]
        if not case.committable:
            with pytest.raises(OstreeError):
                _commit_without_build(world, directory, os2)
            return
        _commit_without_build(world, directory, os2)
    else:
        assert build.code == 0, f"{case.kind}: {build.err}"

    result = world.run("upgrade")
    if case.refused_by == "contained":
        assert result.code == 0, result.err
        assert not Path("/tmp/tether-hostile-canary").exists()
        assert not Path("/run/tether-hostile-canary").exists()
        assert (world.etc() / "motd").read_text() == "Tether Test OS 2\n"
    else:
        _assert_refused(world, result, before, case)
        deploy = world.sysroot / "ostree/deploy/exampleos/deploy"
        assert len([p for p in deploy.iterdir() if p.is_dir()]) == 1, "the new deployment is discarded"
    checked = fsck(world.sysroot)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_corpus_has_at_least_20_kinds() -> None:
    assert len({case.kind for case in CASES}) >= 20


def test_fork_bomb_is_bounded_and_the_upgrade_fails(
    installed: World, small_pids_limit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cgroup.available():
        pytest.skip("no pids cgroup controller here: a fork bomb would not be bounded")
    made: list[Path] = []
    make = cgroup._make

    def recording(limit: int) -> Path | None:
        directory = make(limit)
        if directory is not None:
            made.append(directory)
        return directory

    monkeypatch.setattr(cgroup, "_make", recording)
    world = installed
    before = world.snapshot()
    os2 = world.publish_os(tree=_os_tree(world, 2))
    # bounded, the bomb either runs into its timeout or its shell gives up when it cannot fork
    case = Case("fork bomb", "step", "hooks/hostile.sh",
                **hook("bomb() { bomb | bomb & }\nbomb\nsleep 600\n", timeout="3s"))
    directory = _write_case(world, case)
    assert _build(world, directory, os2).code == 0
    result = world.run("upgrade")
    _assert_refused(world, result, before, case)
    assert "fork" in result.err, "the bomb hit the process limit"
    assert made and not any(d.exists() for d in made), "the step's cgroup is removed"


class _Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
            connection.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener()
    yield server
    server.close()


NETWORK_SCRIPT = """
echo hello | nc -w 3 127.0.0.1 {port} > /etc/fetched
"""


@pytest.mark.parametrize("network", [False, True], ids=["without-network", "with-network"])
def test_hook_reaching_the_network(installed: World, listener: _Listener, network: bool) -> None:
    world = installed
    before = world.snapshot()
    os2 = world.publish_os(tree=_os_tree(world, 2))
    case = Case("network", "step", "exited with code 1",
                **hook(NETWORK_SCRIPT.format(port=listener.port), network=network))
    directory = _write_case(world, case)
    assert _build(world, directory, os2).code == 0
    result = world.run("upgrade")
    if network:
        # the control: with `network = true` the same hook gets through
        assert result.code == 0, result.err
        assert listener.accepted >= 1
        assert (world.etc() / "fetched").read_text().startswith("HTTP/1.0 200 OK")
    else:
        _assert_refused(world, result, before, case)
        assert listener.accepted == 0, "the sandbox reached the test's server"


def test_rm_rf_in_the_sandbox_leaves_host_and_sysroot_intact(installed: World, tmp_path: Path) -> None:
    """`rm -rf /` in a deploy hook: only the new deployment's /etc is writable, and it is discarded."""
    world = installed
    canary = tmp_path / "host-canary"
    canary.write_text("still here\n")
    os2 = world.publish_os(tree=_os_tree(world, 2))
    before = world.snapshot()
    old_etc = world.etc()
    var = world.sysroot / "ostree/deploy/exampleos/var"
    case = Case("rm -rf /", "step", "rm", **hook("rm -rf /*\nrm -rf /\n"))
    directory = _write_case(world, case)
    assert _build(world, directory, os2).code == 0
    result = world.run("upgrade")
    _assert_refused(world, result, before, case)
    assert canary.read_text() == "still here\n"
    assert (old_etc / "passwd").exists() and (old_etc / "motd").exists()
    assert var.is_dir()
    assert (directory / "hooks/hostile.sh").exists(), "the bundle source is untouched"
    vendor = subprocess.run(["ostree", f"--repo={world.repo}", "fsck"], capture_output=True, check=False)
    assert vendor.returncode == 0, vendor.stdout
    checked = fsck(world.sysroot)
    assert checked.returncode == 0, checked.stdout


INSTALL_CASES = [c for c in CASES if c.kind in {
    "path traversal in source", "undeclared setuid bit", "timezone the OS lacks", "hook that fails",
    "hook writing to /usr",
}]


@pytest.mark.parametrize("case", INSTALL_CASES, ids=[c.kind for c in INSTALL_CASES])
def test_hostile_bundle_at_install(fast_world: World, case: Case) -> None:
    """The first installation refuses too: no deployment, and the remote it added is removed."""
    world = fast_world
    os1 = world.publish_os(tree=_os_tree(world, 1))
    directory = _write_case(world, case)
    if case.refused_by == "build":
        _commit_without_build(world, directory, os1)
    else:
        assert _build(world, directory, os1).code == 0
    result = world.install()
    assert result.code == case.code, result.err
    assert case.message in result.err and "Traceback" not in result.err
    assert world.status() == []
    assert "[remote" not in (world.sysroot / "ostree/repo/config").read_text()
    assert list(world.sysroot.glob("ostree/deploy/*/deploy/*")) == [], "no deployment directory is left"
