"""The bootable OS, the vendor's release layer, and disk images of installed sysroots.

`bootable_os` builds once, and caches by recipe hash, a Debian bookworm that really boots:
debootstrap minbase with systemd, udev, kmod, ostree and ostree-boot (plus tether's runtime:
python3, python3-gi, gir1.2-ostree-1.0, bubblewrap), then dracut and linux-image-amd64 installed
inside it without recommends, so that the initramfs comes from dracut and contains
ostree-prepare-root (Debian's ostree-boot ships only a dracut module for it).  The root is then
converted to the ostree layout by the same code as the slow tier's Debian tree, with the real
kernel and initramfs under /usr/lib/modules/$KVER, and committed to an archive repo in the cache.

Each run lays a thin release layer over that commit (`release_layer`): tether from this checkout,
its boot units, and a release marker, installed as a vendor's image build would.  Publishing a
release commits the cached base with the layer on top (`--tree=ref=` + `--tree=dir=`), so
nothing of the 650 MB base is compressed again.  `make_disk_image` turns a sysroot that
`tether install` wrote into an ext4 image with `mkfs.ext4 -d` (no loop devices, no mounts).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ostree_trees import (
    DEBIAN_CONVERSION_VERSION,
    DEBIAN_MIRROR,
    DEBIAN_SUITE,
    KERNEL_VERSION,
    REPO_ROOT,
    TMPFILES_VAR_CONF,
    DebootstrapMissing,
    _convert_to_ostree_layout,
    _locked,
    _remove_tree,
    _unmount_under,
    commit_tree,
    count_entries,
    default_cache_dir,
    init_repo,
)
from tests.world import OS_REF, World

# debootstrap resolves dependencies but not virtual packages: every name here is a real package.
BOOT_PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "ostree",
    "ostree-boot",
    "python3",
    "python3-gi",
    "gir1.2-ostree-1.0",
    "bubblewrap",
)
# Installed inside the tree, dracut first: linux-image-amd64 accepts any initramfs generator,
# and only dracut (with ostree-boot's module) makes one that can boot an ostree deployment.
KERNEL_PACKAGES = ("dracut", "linux-image-amd64")
# Bump when _make_bootable changes, so cached trees are rebuilt.
BOOTABLE_VERSION = 1
BASE_REF = "bootable/base"

# The units tether ships for a booted system, installed and enabled by the release layer.
UNITS_DIR = REPO_ROOT / "contrib" / "systemd"
PYTHON_SITE = "usr/lib/python3/dist-packages"
TETHER_SCRIPT = """\
#!/usr/bin/python3
import sys

from tether.cli import main

sys.exit(main())
"""

# What package scripts in the chroot need of /dev (character devices: major, minor).
CHROOT_DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}

ROOT_LABEL = "tether-root"
# QEMU's user-mode network shows the host's 127.0.0.1 to the guest as this address.
GUEST_HOST_ADDRESS = "10.0.2.2"


@dataclass(frozen=True)
class BootableOS:
    """The cached base commit of the bootable OS."""

    repo: Path
    commit: str
    kernel_version: str
    facts: dict[str, str]


def bootable_recipe_hash() -> str:
    """Names the cached bootable OS: changes whenever what goes into it does."""
    recipe = "\n".join(
        [
            DEBIAN_SUITE,
            "minbase",
            ",".join(BOOT_PACKAGES),
            ",".join(KERNEL_PACKAGES),
            str(DEBIAN_CONVERSION_VERSION),
            str(BOOTABLE_VERSION),
            TMPFILES_VAR_CONF,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def bootable_os(cache_dir: Path | None = None) -> BootableOS:
    """The bootable OS base commit, built on first use into ``cache_dir/bootable-<suite>-<hash>/``.

    Building needs root, debootstrap and the Debian mirror, and takes a few minutes; later calls
    read the cache.  Callers must not write to the returned repo: they pull from it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"bootable-{DEBIAN_SUITE}-{bootable_recipe_hash()}"
    final = cache_dir / name
    with _locked(cache_dir / f"{name}.lock"):
        for stale in cache_dir.glob(f".{name}.*"):
            _remove_tree(stale)
        if not (final / "complete").exists():
            if final.exists():
                _remove_tree(final)
            _build(cache_dir, name, final)
        facts = dict(
            line.split("=", 1) for line in (final / "info").read_text().splitlines() if "=" in line
        )
        return BootableOS(final / "repo", facts["commit"], facts["kernel_version"], facts)


def _build(cache_dir: Path, name: str, final: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise DebootstrapMissing(
            f"debootstrap is not installed: it is needed once to build the bootable OS {final} "
            "(apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise PermissionError("building the bootable OS needs root (debootstrap, chroot, chown)")
    work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=cache_dir))
    try:
        root = work / "root"
        started = time.monotonic()
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BOOT_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ],
            "debootstrap",
        )
        debootstrap_seconds = time.monotonic() - started
        _install_kernel(root)
        kernel_version = _make_bootable(root)
        entries = count_entries(root)
        repo = init_repo(work / "repo")
        commit = commit_tree(repo, root, BASE_REF, subject="bootable Debian base", timestamp=1_600_000_000)
        _remove_tree(root)
        (work / "info").write_text(
            f"commit={commit}\n"
            f"kernel_version={kernel_version}\n"
            f"debootstrap_seconds={debootstrap_seconds:.1f}\n"
            f"build_seconds={time.monotonic() - started:.1f}\n"
            f"entries={entries}\n"
            f"packages={','.join(BOOT_PACKAGES + KERNEL_PACKAGES)}\n"
            f"mirror={DEBIAN_MIRROR}\n"
        )
        (work / "complete").write_text(f"{commit}\n")
        work.chmod(0o755)
        work.rename(final)
        # Bases of older recipes are dead weight (~300 MB each).
        for old in cache_dir.glob(f"bootable-{DEBIAN_SUITE}-*"):
            if old.is_dir() and old.name != name:
                _remove_tree(old)
    finally:
        if work.exists():
            _remove_tree(work)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit {proc.returncode}:\n{proc.stdout[-4000:]}")


@contextlib.contextmanager
def _chroot(root: Path) -> Iterator[list[str]]:
    """API file systems for package scripts in ``root``, and the command prefix to run there."""
    policy = root / "usr/sbin/policy-rc.d"
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        subprocess.run(["mount", "-t", "sysfs", "sysfs", str(root / "sys")], check=True)
        # A /dev of its own rather than the host's: whatever happens to the tree's /dev later
        # (the conversion empties it) must never reach the host's device nodes.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(root / "dev")], check=True)
        for node, (major, minor) in CHROOT_DEVICES.items():
            os.mknod(root / "dev" / node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        # Package scripts must not start services of the tree on the build host.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        yield ["chroot", str(root), "env", "-i", *env]
    finally:
        policy.unlink(missing_ok=True)
        _unmount_under(root)


def _install_kernel(root: Path) -> None:
    with _chroot(root) as chroot:
        _run(
            [*chroot, "apt-get", "install", "-y", "--no-install-recommends", *KERNEL_PACKAGES],
            "installing the kernel and dracut in the tree",
        )
        _run([*chroot, "apt-get", "clean"], "apt-get clean")


def _make_bootable(root: Path) -> str:
    """Kernel and initramfs where ostree looks for them, then the ostree layout; the kernel version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in {root / 'boot'}, found {[k.name for k in kernels]}")
    kernel_version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{kernel_version}"
    if not initrd.is_file():
        raise RuntimeError(f"dracut made no initramfs for {kernel_version} ({initrd} is missing)")
    modules = root / "usr/lib/modules" / kernel_version
    for source, target in ((kernels[0], "vmlinuz"), (initrd, "initramfs.img")):
        shutil.copyfile(source, modules / target)
        (modules / target).chmod(0o644)
    # Debian's links to the current kernel point into /boot, which ostree owns on a deployed system.
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        (root / link).unlink(missing_ok=True)

    _convert_to_ostree_layout(root)
    # The conversion adds the never-booted kernel of the test trees; this tree has a real one,
    # and ostree refuses a tree with two.
    _remove_tree(root / "usr/lib/modules" / KERNEL_VERSION)
    # An appliance has no interactive first boot: the empty machine-id makes every first boot
    # of a deployment "first", and systemd-firstboot would wait for a root password on ttyS0.
    (root / "usr/etc/systemd/system/systemd-firstboot.service").symlink_to("/dev/null")
    return kernel_version


# --- a release: the base plus tether and a release marker --------------------------------------


def release_layer(dest: Path, release: str) -> Path:
    """The files a vendor's image build adds over the base for ``release``: tether and its units.

    tether is copied from this checkout into the OS's Python path with byte code whose validity
    does not depend on file times (ostree checks files out with mtime 0, and /usr is read-only
    at run time, so byte code Python cannot trust would be recompiled on every start).
    """
    dest.mkdir(parents=True)
    package = dest / PYTHON_SITE / "tether"
    shutil.copytree(
        REPO_ROOT / "tether", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(dest),
            "-p",
            "/",
            str(package),
        ],
        check=True,
    )
    script = dest / "usr/bin/tether"
    script.parent.mkdir(parents=True)
    script.write_text(TETHER_SCRIPT)
    script.chmod(0o755)

    unit_dir = dest / "usr/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in sorted(p for p in UNITS_DIR.iterdir() if p.suffix in (".service", ".timer", ".path")):
        shutil.copyfile(unit, unit_dir / unit.name)
        for target, kind in _install_targets(unit.read_text()):
            link = dest / "usr/etc/systemd/system" / f"{target}.{kind}" / unit.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"/usr/lib/systemd/system/{unit.name}")

    marker = dest / "usr/share/exampleos/release"
    marker.parent.mkdir(parents=True)
    marker.write_text(f"{release}\n")

    # The layer's directories replace the base's directory metadata: keep it the base's.
    for dirpath, _, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    return dest


def _install_targets(unit_text: str) -> list[tuple[str, str]]:
    """``[(target, "wants"|"requires")]`` from a unit's [Install] section, as `systemctl enable` reads it."""
    targets: list[tuple[str, str]] = []
    section = None
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Install" and "=" in line:
            key, _, value = line.partition("=")
            kind = {"WantedBy": "wants", "RequiredBy": "requires"}.get(key.strip())
            if kind is not None:
                targets += [(target, kind) for target in value.split()]
    return targets


def publish_release(world: World, base: BootableOS, layer: Path) -> str:
    """Commit the base with ``layer`` over it to the world's OS ref, as its next OS version."""
    ostree = ["ostree", f"--repo={world.repo}"]
    if subprocess.run([*ostree, "show", base.commit], capture_output=True).returncode != 0:
        subprocess.run([*ostree, "pull-local", str(base.repo), base.commit], check=True, capture_output=True)
    # The layer alone first, without the build host's xattrs.  The release is then made of two
    # commits' trees: with no commit modifier, ostree links the base's subtrees by checksum
    # instead of reading all 650 MB again (any modifier, --no-xattrs included, forces that).
    layer_commit = subprocess.run(
        [*ostree, "commit", "--orphan", "--no-xattrs", f"--tree=dir={layer}"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    world.os_version += 1
    version = str(world.os_version)
    proc = subprocess.run(
        [
            *ostree,
            "commit",
            f"--branch={OS_REF}",
            f"--subject=exampleos {version}",
            f"--add-metadata-string=version={version}",
            f"--timestamp=@{1_700_000_000 + world.os_version}",
            f"--tree=ref={base.commit}",
            f"--tree=ref={layer_commit}",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    subprocess.run([*ostree, "summary", "-u"], check=True)
    return proc.stdout.strip().splitlines()[-1]


# --- disk images ---------------------------------------------------------------------------------


def point_remote_at_guest_view(sysroot: Path, remote: str, url: str) -> str:
    """Rewrite ``remote``'s URL as the guest reaches the same server; return the new URL.

    The host installs from ``http://127.0.0.1:PORT``; inside QEMU's user network that address
    is the guest itself, and the host is ``10.0.2.2``.
    """
    guest_url = url.replace("127.0.0.1", GUEST_HOST_ADDRESS).replace("localhost", GUEST_HOST_ADDRESS)
    subprocess.run(
        ["ostree", f"--repo={sysroot / 'ostree/repo'}", "config", "set", f'remote "{remote}".url', guest_url],
        check=True,
    )
    return guest_url


def make_disk_image(sysroot: Path, image: Path, *, label: str = ROOT_LABEL, headroom_mib: int = 2048) -> Path:
    """An ext4 file system image holding ``sysroot`` as its root, with room for upgrades."""
    du = subprocess.run(["du", "-sk", str(sysroot)], check=True, capture_output=True, text=True)
    used_kib = int(du.stdout.split()[0])  # hard links counted once, as mkfs.ext4 -d keeps them
    size_mib = used_kib // 1024 + used_kib // 4096 + headroom_mib
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    _run(["mkfs.ext4", "-q", "-L", label, "-d", str(sysroot), str(image)], "mkfs.ext4")
    return image
