"""A vendor and a machine for end-to-end tests: an OS repo, bundles, a sysroot.

`World` publishes OS commits and bundles into an archive repo (as a release
engineer would), runs tether's CLI in-process against a sysroot directory (as
an operator would), and snapshots everything SPEC's "as it was" covers so a
test can assert that a refused or failed operation changed nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ostree_trees import commit_tree, init_repo, synthetic_tree
from tether.cli import main

OS_REF = "exampleos/x86_64/stable"
STATEROOT = "exampleos"
REMOTE = "exampleos"


@dataclass
class Result:
    code: int
    out: str
    err: str


def tether(*argv: str | Path) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def write_bundle(directory: Path, manifest: str, files: Mapping[str, str | bytes] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tether.toml").write_text(textwrap.dedent(manifest))
    for name, content in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        if name.startswith("hooks/"):
            path.chmod(0o755)
    return directory


def _tree_digest(root: Path) -> dict[str, str]:
    """Every entry under root with its type, mode, owner and content or target."""
    digest: dict[str, str] = {}
    if not root.exists():
        return digest
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                value = "link:" + os.readlink(path)
            elif path.is_file():
                value = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                value = "dir"
            digest[rel] = f"{value}:{st.st_mode:o}:{st.st_uid}:{st.st_gid}"
    return digest


BUSYBOX_APPLETS = (
    "sh",
    "cat",
    "echo",
    "id",
    "sed",
    "grep",
    "ls",
    "touch",
    "rm",
    "mkdir",
    "sleep",
    "chown",
    "chmod",
    "stat",
    "head",
    "wc",
    "printf",
    "true",
    "false",
    "test",
    "cp",
    "mv",
    "ln",
    "readlink",
    "env",
    "kill",
)


def add_busybox(tree: Path) -> Path:
    """A shell and core tools in a synthetic tree, so sandboxed steps have something to run."""
    source = Path(shutil.which("busybox") or "/bin/busybox")
    target = tree / "usr/bin/busybox"
    shutil.copyfile(source, target)
    target.chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        (tree / "usr/bin" / applet).symlink_to("busybox")
    return tree


@dataclass
class World:
    root: Path
    repo: Path = field(init=False)
    sysroot: Path = field(init=False)
    os_version: int = 0
    bundles_built: int = 0
    gpg: tuple[str, Path] | None = None  # (key id, homedir) that signs what is published
    url: str | None = None

    def __post_init__(self) -> None:
        self.repo = init_repo(self.root / "repo")
        self.sysroot = self.root / "sysroot"

    @property
    def remote_url(self) -> str:
        return self.url or f"file://{self.repo}"

    def publish_os(self, extra: Mapping[str, bytes] | None = None, *, tree: Path | None = None) -> str:
        self.os_version += 1
        version = str(self.os_version)
        if tree is None:
            tree = add_busybox(synthetic_tree(self.root / f"os-{version}", version=version, extra=extra))
        key, homedir = self.gpg if self.gpg else (None, None)
        checksum = commit_tree(
            self.repo,
            tree,
            OS_REF,
            version=version,
            timestamp=1_700_000_000 + self.os_version,
            gpg_key=key,
            gpg_homedir=homedir,
        )
        # publishing includes the summary: pulls trust it over the refs
        subprocess.run(["ostree", f"--repo={self.repo}", "summary", "-u"], check=True)
        return checksum

    def publish_bundle(
        self,
        name: str,
        manifest: str,
        files: Mapping[str, str | bytes] | None = None,
        *,
        ref: str | None = None,
        bind: list[str] | None = None,
    ) -> str:
        self.bundles_built += 1
        directory = self.root / "bundles" / f"{name}-{self.bundles_built}"
        write_bundle(directory, manifest, files)
        ref = ref or f"exampleos/x86_64/{name}"
        binds: list[str] = []
        for commit in bind or []:
            binds += ["--bind", commit]
        if not binds:
            binds = ["--bind-ref", OS_REF]
        if self.gpg:
            binds += ["--gpg-sign", self.gpg[0], "--gpg-homedir", str(self.gpg[1])]
        result = tether("bundle", "build", directory, "--repo", self.repo, "--ref", ref, *binds)
        assert result.code == 0, result.err
        checksum = result.out.split("=>")[1].split()[0]
        return checksum

    def install(self, bundle: str = "kiosk", *extra: str) -> Result:
        return tether(
            "install",
            "--sysroot",
            self.sysroot,
            "--stateroot",
            STATEROOT,
            "--remote",
            f"{REMOTE}={self.remote_url}",
            "--no-gpg-verify",
            "--bundle",
            f"{REMOTE}:exampleos/x86_64/{bundle}",
            *extra,
        )

    def run(self, *argv: str | Path) -> Result:
        return tether(*argv, "--sysroot", self.sysroot)

    def status(self) -> list[dict[str, Any]]:
        import json

        result = self.run("status", "--json")
        assert result.code == 0, result.err
        deployments: list[dict[str, Any]] = json.loads(result.out)["deployments"]
        return deployments

    def deployment_root(self, index: int = 0) -> Path:
        d = self.status()[index]
        return self.sysroot / "ostree/deploy" / d["stateroot"] / "deploy" / f"{d['checksum']}.{d['serial']}"

    def etc(self, index: int = 0) -> Path:
        return self.deployment_root(index) / "etc"

    def snapshot(self) -> dict[str, Any]:
        """What SPEC's "as it was" covers: deployments, origins, /etc, kargs, boot entries, /var, remotes."""
        deploy = self.sysroot / "ostree/deploy"
        deployments = self.status()
        state: dict[str, Any] = {"deployments": deployments}
        # deployment directories nothing references (a crash before the switch leaves
        # one) are not state: the next run removes them
        for d in deployments:
            name = f"{d['checksum']}.{d['serial']}"
            base = deploy / d["stateroot"]
            origin = (base / "deploy" / f"{name}.origin").read_text()
            state[f"origin:{name}"] = origin
            state[f"etc:{name}"] = _tree_digest(base / "deploy" / name / "etc")
            for line in origin.splitlines():
                if line.startswith("ledger-id="):
                    entry = base / "var/lib/tether/ledger" / f"{line.split('=', 1)[1]}.json"
                    state[f"ledger:{name}"] = entry.read_text() if entry.exists() else None
        for stateroot in sorted(p.name for p in deploy.iterdir()):
            # tether's own records made before a switch that never happened (ledger
            # entries, kept copies) are not state either: cleanup removes them
            var = _tree_digest(deploy / stateroot / "var")
            state[f"var:{stateroot}"] = {k: v for k, v in var.items() if not k.startswith("lib/tether")}
        boot = self.sysroot / "boot"
        loader = (boot / "loader").resolve()
        state["boot-entries"] = {p.name: p.read_text() for p in sorted((loader / "entries").glob("*.conf"))}
        state["repo-config"] = (self.sysroot / "ostree/repo/config").read_text()
        return state
