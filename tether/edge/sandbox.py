"""The bubblewrap sandbox in which every bundle step (compose hook, deploy and boot steps) runs.

A `Sandbox` says which tree becomes `/` and what is mounted over it; `run_in_sandbox`
runs a step in it through `tether.edge.run`, and `debug_shell` opens a shell in the
same sandbox for `--debug-shell`. The bwrap arguments are built by small functions,
one concern each, and are hardened by default (SPEC, Safety): the step runs as root
*without* a user namespace, so that chown and Ansible's `owner=` work, in new pid,
ipc, uts, cgroup and (unless the step declares network access) net namespaces, with
capabilities dropped to what file ownership needs, in a fresh environment, with
`--die-with-parent --new-session`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.edge.cgroup import pids_limited
from tether.edge.run import run
from tether.errors import TetherError

# Where the bundle directory appears inside the sandbox; steps start there, so a
# hook finds the bundle's files by their manifest-relative paths.
BUNDLE_MOUNT = "/run/tether/bundle"

# What file ownership needs, and nothing else (no SYS_ADMIN, SYS_MODULE, SYS_BOOT,
# NET_ADMIN, MKNOD...). Kept sorted so the argument list is stable.
CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETUID")

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Mount points that bwrap's own file systems need in the tree.
API_MOUNTS = ("/proc", "/dev", "/tmp", "/run")


@dataclass(frozen=True)
class Bind:
    """A host directory (or file) bound at `target` inside the sandbox."""

    source: Path
    target: str
    writable: bool = False

    def __post_init__(self) -> None:
        _check_target(self.target)


@dataclass(frozen=True)
class Tmpfs:
    """An empty tmpfs at `target`, gone when the step ends."""

    target: str

    def __post_init__(self) -> None:
        _check_target(self.target)


Mount = Bind | Tmpfs


@dataclass(frozen=True)
class Sandbox:
    """A tree to run steps in: `root` becomes `/`, then `mounts` are laid over it in order.

    The tree is read-only unless `writable` (only for a private copy: a deployment's
    /usr is hardlinked into the repository, and an in-place write would corrupt its
    objects). `bundle`, when given, is bound read-only at `BUNDLE_MOUNT` and is the
    working directory. /proc, /dev, /tmp and /run are always fresh.
    """

    root: Path
    writable: bool = False
    mounts: tuple[Mount, ...] = ()
    bundle: Path | None = None

    @classmethod
    def compose(cls, tree: Path, bundle: Path | None = None) -> Sandbox:
        """A compose hook: a copy checkout of the OS tree, all writable; no /var.

        An OS commit keeps /etc in /usr/etc; like rpm-ostree's scriptlets, the hook
        sees it at /etc.
        """
        mounts: list[Mount] = []
        if not os.path.lexists(tree / "etc") and (tree / "usr/etc").is_dir():
            mounts.append(Bind(tree / "usr/etc", "/etc", writable=True))
        mounts.append(Tmpfs("/var"))
        return cls(root=tree, writable=True, mounts=tuple(mounts), bundle=bundle)

    @classmethod
    def deploy(cls, deployment: Path, var: Path, bundle: Path | None = None) -> Sandbox:
        """A deploy step: the new deployment with /usr read-only, /etc writable, /var read-only."""
        mounts = (Bind(deployment / "etc", "/etc", writable=True), Bind(var, "/var"))
        return cls(root=deployment, mounts=mounts, bundle=bundle)

    @classmethod
    def boot(cls, deployment: Path, var: Path, bundle: Path | None = None) -> Sandbox:
        """A boot step: the booted deployment with /etc and /var writable, /usr read-only."""
        mounts = (Bind(deployment / "etc", "/etc", writable=True), Bind(var, "/var", writable=True))
        return cls(root=deployment, mounts=mounts, bundle=bundle)

    def with_mounts(self, *mounts: Mount) -> Sandbox:
        """This sandbox with more mounts laid over the others."""
        return dataclasses.replace(self, mounts=(*self.mounts, *mounts))


def run_in_sandbox(
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    timeout: float | None,
    network: bool,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `sandbox`; its output is captured, returned and logged line by line.

    Past `timeout` seconds the whole sandbox is killed (`CommandTimeoutError`); a
    non-zero exit raises `CommandError` unless `check` is false. Processes the step
    leaves in the background die with it, and it has at most `PIDS_MAX` processes
    (`tether.edge.cgroup`). `env` adds variables to the fresh environment.
    """
    command = bwrap_command(sandbox, argv, network=network, env=env)
    with _cleaned_mount_points(sandbox), pids_limited() as launcher:
        return run(
            [*launcher, *command],
            capture=True,
            log_output=True,
            timeout=timeout,
            check=check,
            what=f"{argv[0]} (sandboxed in {sandbox.root})",
            shown=command,
        )


def debug_shell(sandbox: Sandbox, *, network: bool = False, env: Mapping[str, str] | None = None) -> int:
    """Open an interactive /bin/sh in `sandbox` on tether's terminal; return its exit code."""
    shell_env = {"PS1": "tether-sandbox# "}
    if "TERM" in os.environ:
        shell_env["TERM"] = os.environ["TERM"]
    shell_env.update(env or {})
    command = bwrap_command(sandbox, ["/bin/sh"], network=network, env=shell_env, interactive=True)
    with _cleaned_mount_points(sandbox):
        return run(command, check=False, interactive=True, what="debug shell").returncode


def bwrap_command(
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    network: bool,
    env: Mapping[str, str] | None = None,
    interactive: bool = False,
) -> list[str]:
    """The full bwrap command line that runs `argv` in `sandbox`."""
    if not argv:
        raise ValueError("a sandboxed step needs a command")
    _check_mount_points(sandbox)
    return [
        "bwrap",
        *namespace_options(network=network),
        *process_options(interactive=interactive),
        *capability_options(),
        *environment_options(env or {}),
        *root_options(sandbox),
        *api_filesystem_options(),
        *mount_options(sandbox.mounts),
        *resolver_options(sandbox, network=network),
        *bundle_options(sandbox.bundle),
        "--",
        *argv,
    ]


def namespace_options(*, network: bool) -> list[str]:
    # No --unshare-user: in a user namespace only uid 0 is mapped and chown fails.
    options = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        options.append("--unshare-net")
    return options


def process_options(*, interactive: bool = False) -> list[str]:
    # --new-session keeps a step from pushing input into tether's terminal
    # (TIOCSTI); a debug shell needs that terminal as its controlling one.
    options = ["--die-with-parent"]
    if not interactive:
        options.append("--new-session")
    return options


def capability_options() -> list[str]:
    options = ["--cap-drop", "ALL"]
    for capability in CAPABILITIES:
        options += ["--cap-add", capability]
    return options


def environment_options(env: Mapping[str, str]) -> list[str]:
    options = ["--clearenv"]
    fresh = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}
    for name, value in fresh.items():
        if not name or "=" in name or "\0" in name + value:
            raise ValueError(f"invalid environment variable for a sandboxed step: {name!r}")
        options += ["--setenv", name, value]
    return options


def root_options(sandbox: Sandbox) -> list[str]:
    return ["--bind" if sandbox.writable else "--ro-bind", os.fspath(sandbox.root), "/"]


def api_filesystem_options() -> list[str]:
    return ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]


def mount_options(mounts: Sequence[Mount]) -> list[str]:
    options: list[str] = []
    for mount in mounts:
        if isinstance(mount, Tmpfs):
            options += ["--tmpfs", mount.target]
        else:
            options += ["--bind" if mount.writable else "--ro-bind", os.fspath(mount.source), mount.target]
    return options


def resolver_options(sandbox: Sandbox, *, network: bool) -> list[str]:
    """With network access, make the tree's /etc/resolv.conf resolve like the host's.

    Trees commonly point /etc/resolv.conf into /run (systemd-resolved), which is an
    empty tmpfs in the sandbox; bind the host's resolver configuration there.
    """
    if not network:
        return []
    etc = next(
        (m.source for m in reversed(sandbox.mounts) if isinstance(m, Bind) and m.target == "/etc"), None
    )
    resolv_conf = (etc if etc is not None else sandbox.root / "etc") / "resolv.conf"
    host_resolv_conf = Path("/etc/resolv.conf")
    if not resolv_conf.is_symlink() or not host_resolv_conf.exists():
        return []
    target = posixpath.normpath(posixpath.join("/etc", os.readlink(resolv_conf)))
    if not target.startswith("/run/"):
        return []
    return ["--ro-bind", os.fspath(host_resolv_conf.resolve()), target]


def bundle_options(bundle: Path | None) -> list[str]:
    if bundle is None:
        return ["--chdir", "/"]
    return ["--ro-bind", os.fspath(bundle), BUNDLE_MOUNT, "--chdir", BUNDLE_MOUNT]


def _check_target(target: str) -> None:
    if not target.startswith("/") or posixpath.normpath(target) != target or "/.." in target:
        raise ValueError(f"a sandbox mount target must be a normalised absolute path: {target!r}")


def _top_level_mount_points(sandbox: Sandbox) -> list[str]:
    targets = [*API_MOUNTS, *(mount.target for mount in sandbox.mounts)]
    return [name for target in targets if (name := target.strip("/")) and "/" not in name]


def _check_mount_points(sandbox: Sandbox) -> None:
    if not sandbox.root.is_dir():
        raise TetherError(f"cannot sandbox {sandbox.root}: not a directory")
    if sandbox.writable:
        return  # bwrap makes the missing ones
    for name in _top_level_mount_points(sandbox):
        if not os.path.lexists(sandbox.root / name):
            raise TetherError(f"cannot sandbox {sandbox.root}: it has no /{name} to mount on")


@contextlib.contextmanager
def _cleaned_mount_points(sandbox: Sandbox) -> Iterator[None]:
    """Remove the empty mount points bwrap had to create in a writable tree.

    A compose hook's tree becomes a commit: an empty /etc left beside /usr/etc
    would make it undeployable.
    """
    if not sandbox.writable:
        yield
        return
    created = [
        sandbox.root / name
        for name in _top_level_mount_points(sandbox)
        if not os.path.lexists(sandbox.root / name)
    ]
    try:
        yield
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
