from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.edge.sandbox import (
    BUNDLE_MOUNT,
    Bind,
    Sandbox,
    Tmpfs,
    bwrap_command,
    debug_shell,
    run_in_sandbox,
)
from tether.errors import CommandError, CommandTimeoutError, TetherError

# linux/capability.h
CAP_NUMBERS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETFCAP": 31,
}
EXPECTED_CAPS = sum(1 << number for number in CAP_NUMBERS.values())

# The host's programs and libraries, without copying them: bound read-only into trees
# that have empty mount points in their place.
HOST_USR_PARTS = ("bin", "sbin", "lib", "lib64")


def _make_tree(root: Path) -> Path:
    for name in ("usr", "etc", "var", "proc", "dev", "tmp", "run"):
        (root / name).mkdir(parents=True)
    for name in HOST_USR_PARTS:
        (root / "usr" / name).mkdir()
        (root / name).symlink_to(f"usr/{name}")
    return root


def _with_host_programs(sandbox: Sandbox) -> Sandbox:
    return sandbox.with_mounts(*(Bind(Path("/usr") / name, f"/usr/{name}") for name in HOST_USR_PARTS))


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    tree = _make_tree(tmp_path / "deployment")
    (tree / "etc/hostname").write_text("from-the-deployment\n")
    return tree


@pytest.fixture
def stateroot_var(tmp_path: Path) -> Path:
    var = tmp_path / "stateroot-var"
    var.mkdir()
    (var / "marker").write_text("stateroot var\n")
    return var


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "hooks").mkdir(parents=True)
    (bundle / "tether.toml").write_text("[bundle]\n")
    hook = bundle / "hooks/setup.sh"
    hook.write_text("#!/bin/sh\necho hook ran in $(pwd)\n")
    hook.chmod(0o755)
    return bundle


@pytest.fixture
def deploy(deployment: Path, stateroot_var: Path, bundle: Path) -> Sandbox:
    return _with_host_programs(Sandbox.deploy(deployment, stateroot_var, bundle))


def sh(
    sandbox: Sandbox,
    script: str,
    *,
    network: bool = False,
    timeout: float | None = 60,
    env: dict[str, str] | None = None,
) -> str:
    return run_in_sandbox(sandbox, ["sh", "-c", script], timeout=timeout, network=network, env=env).stdout


@pytest.fixture
def host_listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_runs_as_root_in_the_bundle_directory(deploy: Sandbox) -> None:
    out = sh(deploy, "id -u; id -g; pwd; ./hooks/setup.sh; cat tether.toml")
    assert out.splitlines() == ["0", "0", BUNDLE_MOUNT, f"hook ran in {BUNDLE_MOUNT}", "[bundle]"]


def test_bundle_is_read_only(deploy: Sandbox, bundle: Path) -> None:
    with pytest.raises(CommandError):
        sh(deploy, "touch new-file")
    assert not (bundle / "new-file").exists()


def test_usr_is_read_only(deploy: Sandbox) -> None:
    out = sh(deploy, "touch /usr/bin/tether-test 2>&1 || echo refused; touch /usr/x 2>&1 || echo refused")
    assert out.count("refused") == 2
    assert not Path("/usr/bin/tether-test").exists()


def test_deploy_etc_is_writable_and_lands_in_the_deployment(deploy: Sandbox, deployment: Path) -> None:
    assert sh(deploy, "cat /etc/hostname; echo written > /etc/kiosk.conf") == "from-the-deployment\n"
    assert (deployment / "etc/kiosk.conf").read_text() == "written\n"


def test_deploy_var_is_the_stateroot_var_read_only(deploy: Sandbox, stateroot_var: Path) -> None:
    out = sh(deploy, "cat /var/marker; touch /var/new 2>/dev/null || echo refused")
    assert out == "stateroot var\nrefused\n"
    assert not (stateroot_var / "new").exists()


def test_boot_var_and_etc_are_writable(deployment: Path, stateroot_var: Path) -> None:
    sandbox = _with_host_programs(Sandbox.boot(deployment, stateroot_var))
    sh(sandbox, "echo swap > /var/made; echo x > /etc/made; touch /usr/x 2>/dev/null || echo refused")
    assert (stateroot_var / "made").read_text() == "swap\n"
    assert (deployment / "etc/made").read_text() == "x\n"


def test_compose_tree_is_writable_var_is_empty_and_etc_is_usr_etc(tmp_path: Path) -> None:
    tree = _make_tree(tmp_path / "checkout")
    (tree / "etc").rmdir()  # an OS commit keeps /etc in /usr/etc
    (tree / "usr/etc").mkdir()
    (tree / "usr/etc/os-release").write_text("ID=exampleos\n")
    (tree / "var/from-commit").write_text("hidden\n")
    sandbox = _with_host_programs(Sandbox.compose(tree))
    out = sh(
        sandbox, "cat /etc/os-release; echo new > /etc/motd; mkdir -p /usr/share/x; ls -A /var; touch /var/t"
    )
    assert out == "ID=exampleos\n"
    assert (tree / "usr/etc/motd").read_text() == "new\n"
    assert (tree / "usr/share/x").is_dir()
    assert not (tree / "var/t").exists()
    # The /etc mount point bwrap had to make is gone: a tree with both /etc and
    # /usr/etc cannot be deployed.
    assert not (tree / "etc").exists()


def test_chown_works(deploy: Sandbox, deployment: Path) -> None:
    sh(deploy, "touch /etc/owned && chown 1234:5678 /etc/owned && chmod 4750 /etc/owned")
    info = (deployment / "etc/owned").stat()
    assert (info.st_uid, info.st_gid) == (1234, 5678)


def test_capabilities_are_only_what_file_ownership_needs(deploy: Sandbox) -> None:
    status = dict(
        line.split(":\t", 1) for line in sh(deploy, "cat /proc/self/status").splitlines() if ":\t" in line
    )
    assert int(status["CapEff"], 16) == EXPECTED_CAPS
    assert int(status["CapPrm"], 16) == EXPECTED_CAPS
    assert int(status["CapInh"], 16) & ~EXPECTED_CAPS == 0
    assert int(status["CapAmb"], 16) & ~EXPECTED_CAPS == 0
    # bwrap leaves the bounding set alone when it runs as root without a user
    # namespace; no_new_privs is what keeps an exec (even of a setuid program)
    # from regaining anything beyond the permitted set.
    assert status["NoNewPrivs"].strip() == "1"


def test_dropped_capabilities_are_refused(deploy: Sandbox) -> None:
    out = sh(
        deploy,
        "mknod /tmp/null c 1 3 2>/dev/null || echo no-mknod;"
        " hostname changed 2>/dev/null || echo no-sys-admin;"
        " mount -t tmpfs none /tmp 2>/dev/null || echo no-mount",
    )
    assert out.split() == ["no-mknod", "no-sys-admin", "no-mount"]


def test_no_network_by_default(deploy: Sandbox, host_listener: int) -> None:
    out = sh(
        deploy,
        f"cat /proc/net/dev; bash -c 'echo > /dev/tcp/127.0.0.1/{host_listener}' 2>/dev/null || echo refused",
    )
    interfaces = [line.split(":")[0].strip() for line in out.splitlines() if ":" in line]
    assert interfaces == ["lo"]
    assert out.endswith("refused\n")


def test_network_when_declared(deploy: Sandbox, host_listener: int) -> None:
    out = sh(deploy, f"bash -c 'echo > /dev/tcp/127.0.0.1/{host_listener}' && echo connected", network=True)
    assert out == "connected\n"


def test_network_steps_resolve_like_the_host(deployment: Path, stateroot_var: Path) -> None:
    (deployment / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    sandbox = _with_host_programs(Sandbox.deploy(deployment, stateroot_var))
    assert sh(sandbox, "cat /etc/resolv.conf", network=True) == Path("/etc/resolv.conf").read_text()
    offline = bwrap_command(Sandbox.deploy(deployment, stateroot_var), ["true"], network=False)
    assert "/run/systemd/resolve/stub-resolv.conf" not in offline


def test_environment_is_fresh(deploy: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_HOST_SECRET", "leak")
    out = sh(deploy, "env | sort", env={"TETHER_STEP": "deploy"})
    variables = dict(line.split("=", 1) for line in out.splitlines())
    assert "TETHER_HOST_SECRET" not in variables
    assert variables["TETHER_STEP"] == "deploy"
    assert variables["HOME"] == "/root"
    assert variables["LANG"] == "C.UTF-8"
    assert variables["PATH"].startswith("/usr/local/sbin:")
    assert set(variables) <= {"TETHER_STEP", "HOME", "LANG", "PATH", "PWD", "SHLVL", "_"}


def test_own_pid_namespace(deploy: Sandbox) -> None:
    out = sh(deploy, "ls /proc; cat /proc/1/comm")
    pids = [name for name in out.split() if name.isdigit()]
    assert len(pids) <= 4  # bwrap's init, sh, ls; not the host's processes
    assert out.split()[-1] == "bwrap"


def test_failing_step_raises_with_the_exit_code(deploy: Sandbox) -> None:
    with pytest.raises(CommandError) as error:
        sh(deploy, "echo 'step broke' >&2; exit 3")
    assert error.value.returncode == 3
    message = str(error.value)
    assert "exited with code 3" in message
    assert "step broke" in message
    assert "To reproduce: bwrap " in message


def test_check_false_returns_the_failure(deploy: Sandbox) -> None:
    result = run_in_sandbox(deploy, ["sh", "-c", "echo out; exit 5"], timeout=60, network=False, check=False)
    assert (result.returncode, result.stdout) == (5, "out\n")


def test_hanging_step_is_killed_at_its_timeout(deploy: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as error:
        sh(deploy, "sleep 1000 & sleep 1000", timeout=1)
    assert time.monotonic() - started < 10
    assert "timed out after 1 s and was killed" in str(error.value)
    assert _no_process_with_argument("1000")


def test_background_process_does_not_keep_the_step_running(deploy: Sandbox) -> None:
    started = time.monotonic()
    assert sh(deploy, "sleep 987654 & echo started", timeout=60) == "started\n"
    assert time.monotonic() - started < 10
    assert _no_process_with_argument("987654")


def test_missing_mount_point_in_a_read_only_tree(deployment: Path, stateroot_var: Path) -> None:
    (deployment / "run").rmdir()
    with pytest.raises(TetherError, match="has no /run to mount on"):
        sh(Sandbox.deploy(deployment, stateroot_var), "true")


def test_mount_targets_must_be_absolute_and_normalised() -> None:
    for target in ("etc", "/etc/../usr", "/etc/"):
        with pytest.raises(ValueError):
            Tmpfs(target)


def test_debug_shell_runs_in_the_same_sandbox(deploy: Sandbox, deployment: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"id -u > /etc/from-shell; pwd >> /etc/from-shell; exit 7\n")
    os.close(write_end)
    saved_stdin = os.dup(0)
    try:
        os.dup2(read_end, 0)
        assert debug_shell(deploy) == 7
    finally:
        os.dup2(saved_stdin, 0)
        os.close(saved_stdin)
        os.close(read_end)
    assert (deployment / "etc/from-shell").read_text() == f"0\n{BUNDLE_MOUNT}\n"


def test_command_line_is_hardened(deploy: Sandbox) -> None:
    command = bwrap_command(deploy, ["true"], network=False)
    for option in (
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert option in command
    assert "--unshare-user" not in command and "--unshare-all" not in command
    assert command[command.index("--cap-drop") : command.index("--cap-drop") + 2] == ["--cap-drop", "ALL"]
    added = [command[i + 1] for i, arg in enumerate(command) if arg == "--cap-add"]
    assert added == sorted(CAP_NUMBERS)
    assert "--unshare-net" not in bwrap_command(deploy, ["true"], network=True)


def _no_process_with_argument(argument: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_cmdline(pid) == ["sleep", argument] for pid in os.listdir("/proc") if pid.isdigit()):
            return True
        time.sleep(0.05)
    return False


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
