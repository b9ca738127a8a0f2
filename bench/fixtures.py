"""What the benchmark runs on: OS commits, the 10-file bundle, repositories and installed sysroots.

OS trees come from `tests.ostree_trees` (the same fixtures the tests use). Every OS kind has a
version 1 and, for the upgrade, a version 2 that changes `CHANGED_FILES` files and os-release, as
an OS update does. The bundle lays `BUNDLE_FILES` files under /etc; version 2 changes their
content. Everything is committed through the ostree and tether CLIs, as a vendor would.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.ostree_trees import (
    commit_tree,
    count_entries,
    debian_tree,
    init_repo,
    large_synthetic_tree,
    synthetic_tree,
    update_summary,
)
from tether.edge.ostree import clear_immutable

OS_REF = "exampleos/x86_64/stable"
BUNDLE_REF = "exampleos/x86_64/bench"
STATEROOT = "exampleos"
REMOTE = "exampleos"

BUNDLE_FILES = 10
SMALL_FILES = 1000
CHANGED_FILES = 50
BASE_TIMESTAMP = 1_700_000_000


@dataclass(frozen=True)
class OsKind:
    key: str  # "small", "large" or "debian"
    title: str


SMALL = OsKind("small", "small synthetic OS")
LARGE = OsKind("large", "large synthetic OS")
DEBIAN = OsKind("debian", "Debian bookworm minbase")


def tether_command() -> list[str]:
    """The `tether` console script of the running virtualenv."""
    script = Path(sys.executable).with_name("tether")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tether"]


def run(cmd: list[str]) -> str:
    """Run a setup command; its stdout, or its output in the error when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


# --- OS trees and commits ---------------------------------------------------------------------


class Trees:
    """OS trees on disk, built once per benchmark run and shared by every repository."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._debian: Path | None = None

    def debian_root(self) -> Path:
        if self._debian is None:
            self._debian = debian_tree()
        return self._debian

    def synthetic(self, kind: OsKind, version: int) -> Path:
        dest = self.directory / f"{kind.key}-v{version}"
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".tmp")
            if kind is LARGE:
                large_synthetic_tree(tmp, version=str(version))
            else:
                synthetic_tree(tmp, version=str(version), files=SMALL_FILES, changed_files=CHANGED_FILES)
            tmp.rename(dest)
        return dest

    def root(self, kind: OsKind) -> Path:
        """Version 1 of the tree, to count its entries."""
        return self.debian_root() if kind is DEBIAN else self.synthetic(kind, 1)

    def entries(self, kind: OsKind) -> int:
        return count_entries(self.root(kind))

    def debian_update(self) -> Path:
        """What Debian version 2 changes: os-release and `CHANGED_FILES` Python modules."""
        dest = self.directory / "debian-v2-delta"
        if dest.exists():
            return dest
        root = self.debian_root()
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.mkdir(parents=True)
        _copy_stat(root, tmp)
        modules = sorted(p for p in (root / "usr/lib").glob("python3*/**/*.py") if _is_plain_file(p))
        changed = [p for p in (root / "usr/lib/os-release",) if _is_plain_file(p)] + modules[:CHANGED_FILES]
        for source in changed:
            target = tmp / source.relative_to(root)
            for parent in reversed(source.relative_to(root).parents[:-1]):
                (tmp / parent).mkdir(exist_ok=True)
                _copy_stat(root / parent, tmp / parent)
            data = source.read_bytes()
            if not data.endswith(b"\n"):
                data += b"\n"
            data += b"IMAGE_VERSION=2\n" if source.name == "os-release" else b"# changed by OS version 2\n"
            target.write_bytes(data)
            _copy_stat(source, target)
        tmp.rename(dest)
        return dest


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _copy_stat(source: Path, target: Path) -> None:
    st = source.lstat()
    os.chown(target, st.st_uid, st.st_gid)
    target.chmod(stat.S_IMODE(st.st_mode))


def commit_os(trees: Trees, kind: OsKind, repo: Path, version: int) -> str:
    """Commit version `version` of an OS kind to `OS_REF` in `repo`; its checksum."""
    timestamp = BASE_TIMESTAMP + version
    subject = f"{kind.title} {version}"
    if kind is not DEBIAN:
        tree = trees.synthetic(kind, version)
        return commit_tree(repo, tree, OS_REF, subject=subject, version=str(version), timestamp=timestamp)
    if version == 1:
        root = trees.debian_root()
        return commit_tree(repo, root, OS_REF, subject=subject, version="1", timestamp=timestamp)
    # a later version: the previous commit with the changed files laid over it
    out = run(
        [
            "ostree",
            f"--repo={repo}",
            "commit",
            f"--branch={OS_REF}",
            f"--tree=ref={OS_REF}",
            f"--tree=dir={trees.debian_update()}",
            f"--subject={subject}",
            f"--add-metadata-string=version={version}",
            f"--timestamp=@{timestamp}",
            "--no-xattrs",
        ]
    )
    return out.strip().splitlines()[-1]


# --- the bundle -------------------------------------------------------------------------------


def bundle_file(index: int) -> str:
    return f"/etc/bench/file-{index:02d}.conf"


def bundle_content(index: int, version: int) -> str:
    return f"# bench bundle version {version}\nsetting-{index} = {version}\n"


def write_bundle(directory: Path, version: int) -> Path:
    """The bundle: `BUNDLE_FILES` [[file]] entries under /etc, nothing else."""
    lines = ["[bundle]", 'name = "bench"', f'version = "{version}"', f'os-ref = "{OS_REF}"', ""]
    for i in range(BUNDLE_FILES):
        # a JSON string of ASCII text is a valid TOML basic string
        content = json.dumps(bundle_content(i, version))
        lines += ["[[file]]", f'path = "{bundle_file(i)}"', f"content = {content}", ""]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tether.toml").write_text("\n".join(lines))
    return directory


def write_overlay(directory: Path, version: int) -> Path:
    """The same files as the bundle, as a directory to lay over an OS tree with plain ostree."""
    for i in range(BUNDLE_FILES):
        path = directory / "usr" / bundle_file(i).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(bundle_content(i, version))
        path.chmod(0o644)
    for current, dirnames, _ in os.walk(directory):
        Path(current).chmod(0o755)
        for name in dirnames:
            (Path(current) / name).chmod(0o755)
    return directory


def build_bundle(repo: Path, directory: Path) -> str:
    """`tether bundle build`, bound to the commit `OS_REF` points to; the bundle commit."""
    out = run([*tether_command(), "bundle", "build", str(directory), "--repo", str(repo), "--ref", BUNDLE_REF,
               "--bind-ref", OS_REF])
    return out.split("=>")[1].split()[0]


# --- repositories and sysroots ----------------------------------------------------------------


@dataclass(frozen=True)
class ComposeRepo:
    """A bare repository (as on a machine) with OS version 1 and bundle version 1 bound to it."""

    path: Path
    os_commit: str
    bundle_commit: str
    overlay: Path
    entries: int


def compose_repo(trees: Trees, kind: OsKind, work: Path) -> ComposeRepo:
    path = init_repo(work / "repo", "bare")
    os_commit = commit_os(trees, kind, path, 1)
    bundle_commit = build_bundle(path, write_bundle(work / "bundle-v1", 1))
    overlay = write_overlay(work / "overlay-v1", 1)
    return ComposeRepo(path, os_commit, bundle_commit, overlay, trees.entries(kind))


@dataclass(frozen=True)
class UpgradeSetup:
    """A vendor repo with both pairs, a sysroot installed with pair 1, and the commit of pair 2."""

    vendor: Path
    template: Path
    composed: str


def upgrade_setup(trees: Trees, kind: OsKind, work: Path) -> UpgradeSetup:
    vendor = init_repo(work / "vendor", "archive")
    commit_os(trees, kind, vendor, 1)
    update_summary(vendor)
    build_bundle(vendor, write_bundle(work / "bundle-v1", 1))
    template = work / "sysroot-template"
    run(
        [
            *tether_command(),
            "install",
            "--sysroot",
            str(template),
            "--stateroot",
            STATEROOT,
            "--remote",
            f"{REMOTE}=file://{vendor}",
            "--no-gpg-verify",
            "--bundle",
            f"{REMOTE}:{BUNDLE_REF}",
        ]
    )
    commit_os(trees, kind, vendor, 2)
    update_summary(vendor)
    build_bundle(vendor, write_bundle(work / "bundle-v2", 2))
    # the commit tether will deploy: the same inputs give the same checksum in any repository
    out = run([*tether_command(), "compose", "--repo", str(vendor), "--os", OS_REF, "--bundle", BUNDLE_REF])
    composed = out.split()[-1]
    return UpgradeSetup(vendor, template, composed)


def deployed(sysroot: Path, checksum: str) -> bool:
    return any((sysroot / "ostree/deploy" / STATEROOT / "deploy").glob(f"{checksum}.*"))


def copy_tree(source: Path, dest: Path) -> None:
    """`cp -a`: hardlinks between a sysroot's repository and its deployments are kept."""
    run(["cp", "-a", str(source), str(dest)])


def remove_tree(path: Path) -> None:
    """Remove a work directory; ostree makes deployment roots immutable."""
    if not path.exists():
        return
    # sysroots are the directory itself or at most two levels below it
    for sysroot in (path, *path.glob("*"), *path.glob("*/*")):
        for deployment in sysroot.glob("ostree/deploy/*/deploy/*"):
            if deployment.is_dir() and not deployment.is_symlink():
                clear_immutable(deployment)
    shutil.rmtree(path)
