"""What parts 4 and 5 of the benchmark run on.

4. The same `CHANGES` changes under /etc (`CHANGE_DIRECTORIES` directories and `CHANGE_FILES` files
   with their content and modes), written twice: as a bundle of native `[[directory]]` and
   `[[file]]` resources, and as a bundle whose Ansible playbook makes them with `file` and `copy`
   tasks. The OS is the Debian tree with Ansible (`tests.ostree_trees.debian_tree` with
   `ANSIBLE_PACKAGES`).
5. A Debian machine for `tether drift`: installed from a vendor repo with a bundle of a few files
   (one enforced), a unit, kernel arguments and a deploy hook, then upgraded once, so that it has
   a rollback deployment as a machine in service does.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bench import fixtures
from bench.fixtures import DEBIAN, OS_REF, REMOTE, STATEROOT, Trees
from tests.ostree_trees import commit_tree, count_entries, debian_tree, init_repo, update_summary

ANSIBLE_PACKAGES = ("ansible-core", "python3-cffi-backend")

CHANGE_DIRECTORIES = 10
CHANGE_FILES = 40
CHANGES = CHANGE_DIRECTORIES + CHANGE_FILES
CHANGES_ROOT = "/etc/bench"
PLAYBOOK = "site.yml"
# Part 4 starts no round (after the first two) that would end past this: a playbook run takes 15 to
# 40 s depending on the machine's load.
CHANGES_BUDGET_SECONDS = 180.0

_FILE_MODES = ("0644", "0640", "0600", "0755")
_DIRECTORY_MODES = ("0755", "0750")


# --- 4. the 50 changes, native and as a playbook ----------------------------------------------


@dataclass(frozen=True)
class Change:
    path: str  # absolute, under /etc
    mode: str  # octal, as both forms write it
    content: str | None  # None for a directory


def changes() -> list[Change]:
    """The directories first (the playbook's `copy` tasks need them), then the files."""
    directories = [
        Change(f"{CHANGES_ROOT}/app-{d:02d}", _DIRECTORY_MODES[d % len(_DIRECTORY_MODES)], None)
        for d in range(CHANGE_DIRECTORIES)
    ]
    per_directory = CHANGE_FILES // CHANGE_DIRECTORIES
    files = [
        Change(
            f"{directories[i // per_directory].path}/setting-{i:02d}.conf",
            _FILE_MODES[i % len(_FILE_MODES)],
            f"# bench change {i}\nname = setting-{i:02d}\nvalue = {i * 7919 % 1000}\nenabled = true\n",
        )
        for i in range(CHANGE_FILES)
    ]
    return directories + files


def _bundle_header(name: str, version: int = 1) -> list[str]:
    return ["[bundle]", f'name = "{name}"', f'version = "{version}"', f'os-ref = "{OS_REF}"', ""]


def write_native_bundle(directory: Path) -> Path:
    """The changes as `[[directory]]` and `[[file]]` resources."""
    lines = _bundle_header("bench-native")
    for change in changes():
        if change.content is None:
            lines += ["[[directory]]", f'path = "{change.path}"', f'mode = "{change.mode}"', ""]
        else:
            # a JSON string of ASCII text is a valid TOML basic string
            content = json.dumps(change.content)
            lines += ["[[file]]", f'path = "{change.path}"', f"content = {content}"]
            lines += [f'mode = "{change.mode}"', ""]
    directory.mkdir(parents=True)
    (directory / "tether.toml").write_text("\n".join(lines))
    return directory


def write_ansible_bundle(directory: Path) -> Path:
    """The changes as one playbook of `file` and `copy` tasks, in a bundle that runs it."""
    tasks = []
    for change in changes():
        if change.content is None:
            tasks += [
                f"    - name: directory {change.path}",
                "      ansible.builtin.file:",
                f"        path: {change.path}",
                "        state: directory",
                f'        mode: "{change.mode}"',
            ]
        else:
            # a JSON string of ASCII text is a valid YAML double-quoted scalar
            tasks += [
                f"    - name: file {change.path}",
                "      ansible.builtin.copy:",
                f"        dest: {change.path}",
                f"        content: {json.dumps(change.content)}",
                f'        mode: "{change.mode}"',
            ]
    playbook = ["- hosts: localhost", "  gather_facts: false", "  tasks:", *tasks, ""]
    manifest = [*_bundle_header("bench-ansible"), "[[ansible]]", f'playbook = "{PLAYBOOK}"', ""]
    directory.mkdir(parents=True)
    (directory / "tether.toml").write_text("\n".join(manifest))
    (directory / PLAYBOOK).write_text("\n".join(playbook))
    return directory


@dataclass(frozen=True)
class ChangesRepo:
    """A bare repository with the Debian-with-Ansible OS commit and the native bundle bound to it."""

    path: Path
    os_commit: str
    bundle_commit: str
    os_root: Path  # the tree that was committed (shared: copy it before writing)
    ansible_bundle: Path
    entries: int


def changes_repo(work: Path) -> ChangesRepo:
    os_root = debian_tree(extra_packages=ANSIBLE_PACKAGES)
    path = init_repo(work / "repo", "bare")
    os_commit = commit_tree(
        path, os_root, OS_REF, subject="Debian with Ansible", version="1", timestamp=fixtures.BASE_TIMESTAMP
    )
    bundle_commit = fixtures.build_bundle(path, write_native_bundle(work / "bundle-native"))
    ansible_bundle = write_ansible_bundle(work / "bundle-ansible")
    return ChangesRepo(path, os_commit, bundle_commit, os_root, ansible_bundle, count_entries(os_root))


def etc_image(etc: Path) -> dict[str, str]:
    """Every entry under `CHANGES_ROOT` of a tree's /usr/etc (or /etc): type, mode, owner, content."""
    root = etc / CHANGES_ROOT.removeprefix("/etc/")
    paths = [root]
    for current, dirnames, filenames in os.walk(root):
        paths += [Path(current) / name for name in (*dirnames, *filenames)]
    image = {}
    for path in paths:
        st = path.lstat()
        what = repr(path.read_text()) if stat.S_ISREG(st.st_mode) else "directory"
        image[str(path.relative_to(root))] = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid} {what}"
    return image


# --- 5. a Debian machine for `tether drift` ---------------------------------------------------

DRIFT_KARGS = ("quiet", "console=ttyS0")
DRIFT_UNIT = "bench-drift.service"

_UNIT = """\
[Unit]
Description=bench drift unit

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""

_HOOK = """\
#!/bin/sh
set -e
echo "written by the deploy hook, bundle version {version}" > /etc/bench-drift/hooked.conf
echo "RuntimeMaxUse=16M" >> /etc/systemd/journald.conf
"""


def write_drift_bundle(directory: Path, version: int) -> Path:
    kargs = ", ".join(f'"{karg}"' for karg in DRIFT_KARGS)
    files = [
        ("/etc/bench-drift/app.conf", "0644", "default"),
        ("/etc/bench-drift/secret.conf", "0600", "default"),
        ("/etc/bench-drift/policy.conf", "0644", "enforce"),
        ("/etc/motd", "0644", "default"),
    ]
    lines = [*_bundle_header("bench-drift", version), "[kernel]", f"arguments = [{kargs}]", ""]
    for path, mode, policy in files:
        content = json.dumps(f"# {path} from bundle version {version}\n")
        lines += ["[[file]]", f'path = "{path}"', f"content = {content}", f'mode = "{mode}"']
        lines += [f'policy = "{policy}"', ""]
    lines += ["[[unit]]", f'name = "{DRIFT_UNIT}"', f'source = "units/{DRIFT_UNIT}"', "enabled = true", ""]
    lines += ["[[hook]]", 'stage = "deploy"', 'run = "hooks/setup.sh"', ""]
    (directory / "units").mkdir(parents=True)
    (directory / "hooks").mkdir()
    (directory / "tether.toml").write_text("\n".join(lines))
    (directory / "units" / DRIFT_UNIT).write_text(_UNIT)
    (directory / "hooks/setup.sh").write_text(_HOOK.format(version=version))
    (directory / "hooks/setup.sh").chmod(0o755)
    return directory


def drift_machine(trees: Trees, work: Path) -> Path:
    """The sysroot: Debian 1 + bundle 1 installed, then upgraded to Debian 2 + bundle 2."""
    vendor = init_repo(work / "vendor", "archive")
    sysroot = work / "sysroot"
    for version in (1, 2):
        fixtures.commit_os(trees, DEBIAN, vendor, version)
        update_summary(vendor)
        fixtures.build_bundle(vendor, write_drift_bundle(work / f"bundle-v{version}", version))
        if version == 1:
            fixtures.run(
                [
                    *fixtures.tether_command(),
                    "install",
                    "--sysroot",
                    str(sysroot),
                    "--stateroot",
                    STATEROOT,
                    "--remote",
                    f"{REMOTE}=file://{vendor}",
                    "--no-gpg-verify",
                    "--bundle",
                    f"{REMOTE}:{fixtures.BUNDLE_REF}",
                ]
            )
        else:
            fixtures.run([*fixtures.tether_command(), "upgrade", "--sysroot", str(sysroot)])
    return sysroot
