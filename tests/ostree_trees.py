"""OS trees in ostree layout for tests and benchmarks, and the ostree CLI calls that commit them.

This module owns the fixtures every integration test and ``bench/run.py`` start from: a small
synthetic OS root (``synthetic_tree``; ``large_synthetic_tree`` for the benchmark's many-file
case), a real Debian bookworm minbase root converted to the ostree layout and cached as a tar
(``debian_tree``), and thin wrappers around ``ostree init``/``commit`` (``init_repo``,
``commit_tree``).  It is plain test support: standard library only, no pytest, and it calls the
``ostree``, ``debootstrap`` and ``tar`` programs directly rather than going through tether.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# One kernel version for every tree built here, so tests can name the deployment's kernel
# without looking it up.  The bytes are fixed too: ostree derives the boot checksum from
# vmlinuz + initramfs, and an unchanged kernel across OS versions is the common upgrade case.
KERNEL_VERSION = "6.1.0-tether"
KERNEL_BYTES = b"tether fake vmlinuz: never booted\n"
INITRAMFS_BYTES = b"tether fake initramfs: never booted\n"

# The file count of the benchmark's "large synthetic OS" (a Fedora-like /usr is ~20k entries).
LARGE_FILES = 19000
FILLER_PER_DIR = 500

# Top-level symlinks of the ostree layout: /var holds all mutable state and is shared by the
# deployments of a stateroot, so anything that must persist lives behind a link into it.
OSTREE_LINKS: dict[str, str] = {
    "bin": "usr/bin",
    "lib": "usr/lib",
    "sbin": "usr/sbin",
    "ostree": "sysroot/ostree",
    "home": "var/home",
    "root": "var/roothome",
}
# Mount points and API filesystems: present and empty in every deployment.
EMPTY_DIRS: dict[str, int] = {
    "boot": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "var": 0o755,
    "sysroot": 0o755,
}

# The tree carries no /var content (ostree never updates /var after the first deployment of a
# stateroot), so the directories the OS expects there are recreated at boot by tmpfiles.
TMPFILES_VAR_CONF = """\
# /var is shared by all deployments of a stateroot and starts empty: recreate what the OS expects.
d /var/lib 0755 - - -
d /var/log 0755 - - -
d /var/cache 0755 - - -
d /var/spool 0755 - - -
d /var/tmp 1777 - - -
d /var/home 0755 - - -
d /var/roothome 0700 root root -
d /var/opt 0755 - - -
d /var/srv 0755 - - -
d /var/mnt 0755 - - -
d /var/local 0755 - - -
d /var/mail 2775 root mail -
L /var/run - - - - ../run
L /var/lock - - - - ../run/lock
"""

# --- synthetic tree --------------------------------------------------------------------------

_PASSWD = """\
root:x:0:0:root:/var/roothome:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
_GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
shadow:x:42:
video:x:44:
users:x:100:
nogroup:x:65534:
"""
_SHADOW = "".join(f"{line.split(':')[0]}:*:19000:0:99999:7:::\n" for line in _PASSWD.splitlines())
_GSHADOW = "".join(f"{line.split(':')[0]}:*::\n" for line in _GROUP.splitlines())

_SSHD_SERVICE = """\
[Unit]
Description=OpenSSH server (fake)

[Service]
ExecStart=/usr/sbin/sshd -D

[Install]
WantedBy=multi-user.target
"""
_MULTI_USER_TARGET = """\
[Unit]
Description=Multi-User System
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""


def _os_release(version: str) -> str:
    return (
        'NAME="Tether Test OS"\n'
        "ID=tether-test\n"
        f"VERSION_ID={version}\n"
        f'PRETTY_NAME="Tether Test OS {version}"\n'
    )


def _mkdirs(root: Path, rel: str | Path) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    # Explicit modes everywhere: the umask of whoever runs the tests must not change checksums.
    for parent in (path.relative_to(root), *path.relative_to(root).parents[:-1]):
        (root / parent).chmod(0o755)
    return path


def _write(root: Path, rel: str, data: bytes | str, mode: int = 0o644) -> None:
    path = _mkdirs(root, Path(rel).parent) / Path(rel).name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def _make_skeleton(root: Path, links: Mapping[str, str]) -> None:
    for name, mode in EMPTY_DIRS.items():
        (root / name).mkdir(exist_ok=True)
        (root / name).chmod(mode)
    for name, target in links.items():
        (root / name).symlink_to(target)


def synthetic_tree(
    dest: Path,
    *,
    version: str = "1",
    files: int = 20,
    extra: Mapping[str, bytes] | None = None,
    per_dir: int = FILLER_PER_DIR,
    changed_files: int = 0,
) -> Path:
    """Build a small fake OS root in ostree layout at ``dest`` (absent or empty) and return it.

    ``files`` filler files go under ``usr/share/filler/dNNN/`` in directories of ``per_dir``;
    their content does not depend on ``version`` except for the first ``changed_files``, so two
    versions differ in os-release and exactly that many fillers.  ``extra`` maps relative paths
    to contents, written last (so it may replace any file above).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    dest.chmod(0o755)
    _make_skeleton(dest, OSTREE_LINKS)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/share"):
        _mkdirs(dest, d)

    modules = f"usr/lib/modules/{KERNEL_VERSION}"
    _write(dest, f"{modules}/vmlinuz", KERNEL_BYTES)
    _write(dest, f"{modules}/initramfs.img", INITRAMFS_BYTES)

    _write(dest, "usr/lib/os-release", _os_release(version))
    _write(dest, "usr/etc/os-release", _os_release(version))
    _write(dest, "usr/etc/passwd", _PASSWD)
    _write(dest, "usr/etc/group", _GROUP)
    _write(dest, "usr/etc/shadow", _SHADOW, 0o640)
    _write(dest, "usr/etc/gshadow", _GSHADOW, 0o640)
    _write(dest, "usr/etc/motd", f"Tether Test OS {version}\n")
    _write(dest, "usr/etc/hostname", "localhost\n")
    _write(dest, "usr/etc/machine-id", b"")
    # tzdata is real binary data; only existence matters to tether (timezone validation).
    _write(dest, "usr/share/zoneinfo/UTC", b"TZif2 fake UTC\n")
    _write(dest, "usr/share/zoneinfo/Europe/Madrid", b"TZif2 fake Europe/Madrid\n")
    _write(dest, "usr/lib/systemd/system/sshd.service", _SSHD_SERVICE)
    _write(dest, "usr/lib/systemd/system/multi-user.target", _MULTI_USER_TARGET)
    _write(dest, "usr/lib/tmpfiles.d/tether-var.conf", TMPFILES_VAR_CONF)
    wants = _mkdirs(dest, "usr/etc/systemd/system/multi-user.target.wants")
    # Enabled by the OS itself, as `systemctl enable` would have done at image build time.
    (wants / "sshd.service").symlink_to("/usr/lib/systemd/system/sshd.service")

    filler = dest / "usr/share/filler"
    for i in range(files):
        subdir = filler / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            _mkdirs(dest, subdir.relative_to(dest))
        content = f"filler {i}\n" if i >= changed_files else f"filler {i} of version {version}\n"
        # Written directly: the per-file parent chmods of _write dominate the large tree's time.
        path = subdir / f"f{i:05d}"
        path.write_text(content)
        path.chmod(0o644)

    for rel, data in (extra or {}).items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"extra path must be relative and inside the tree: {rel!r}")
        _write(dest, rel, data)
    return dest


def large_synthetic_tree(dest: Path, *, version: str = "1", files: int = LARGE_FILES) -> Path:
    """The benchmark's "large synthetic OS": ``synthetic_tree`` with ``files`` fillers."""
    return synthetic_tree(dest, version=version, files=files)


# --- Debian tree -----------------------------------------------------------------------------

DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
# debootstrap resolves dependencies but not virtual packages: every name here is a real package.
DEBIAN_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3")
# Bump when _convert_to_ostree_layout changes, so cached trees are rebuilt.
DEBIAN_CONVERSION_VERSION = 2
# Only where packages come from; not part of the recipe hash.
DEBIAN_MIRROR = os.environ.get("TETHER_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class DebootstrapMissing(RuntimeError):
    """debootstrap is not installed, so the Debian tree cannot be built."""


def default_cache_dir() -> Path:
    """``$TETHER_TEST_CACHE`` or ``<repo>/.cache``."""
    env = os.environ.get("TETHER_TEST_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache"


DEFAULT_CACHE_DIR = default_cache_dir()


def debian_recipe_hash(extra_packages: Sequence[str] = ()) -> str:
    """Names the cached Debian tree: changes whenever what goes into the tree does."""
    recipe = "\n".join(
        [
            DEBIAN_SUITE,
            DEBIAN_VARIANT,
            ",".join((*DEBIAN_PACKAGES, *extra_packages)),
            str(DEBIAN_CONVERSION_VERSION),
            KERNEL_VERSION,
            TMPFILES_VAR_CONF,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _debian_prefix(extra_packages: Sequence[str]) -> str:
    # each package set is cached on its own, so variants never evict each other
    if not extra_packages:
        return f"debian-{DEBIAN_SUITE}-"
    label = hashlib.sha256(",".join(extra_packages).encode()).hexdigest()[:8]
    return f"debian-{DEBIAN_SUITE}-plus{label}-"


def debian_tree(
    cache_dir: Path | None = None, *, dest: Path | None = None, extra_packages: Sequence[str] = ()
) -> Path:
    """Return the root of a Debian bookworm minbase tree in ostree layout.

    Built once with debootstrap (needs root and the Debian mirror) into
    ``cache_dir/debian-bookworm-<recipe hash>.tar``.  Without ``dest`` the tar is extracted once
    to ``cache_dir/debian-bookworm-<hash>/root`` and that shared directory is returned: callers
    must not modify it.  With ``dest`` (absent or empty) a private copy is extracted there.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = _debian_prefix(extra_packages)
    name = f"{prefix}{debian_recipe_hash(extra_packages)}"
    tar_path = cache_dir / f"{name}.tar"
    with _locked(cache_dir / f"{name}.lock"):
        # We hold the lock: any work directory left here is from a killed build or extraction.
        for stale in cache_dir.glob(f".{name}.*"):
            _remove_tree(stale)
        if not tar_path.exists():
            _build_debian_tar(cache_dir, name, tar_path, prefix, (*DEBIAN_PACKAGES, *extra_packages))
        if dest is not None:
            dest = Path(dest)
            dest.mkdir(parents=True, exist_ok=True)
            if any(dest.iterdir()):
                raise FileExistsError(f"{dest} is not empty")
            _extract(tar_path, dest)
            return dest
        final = cache_dir / name
        stamp = final / "complete"
        if stamp.exists():
            return final / "root"
        if final.exists():
            _remove_tree(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.extract-", dir=cache_dir))
        _extract(tar_path, staging / "root")
        # The stamp sits beside the root, not in it, so it never ends up in a commit.
        (staging / "complete").write_text(f"{tar_path.name}\n")
        staging.chmod(0o755)
        staging.rename(final)
        return final / "root"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Parallel test workers and the benchmark may ask at the same time; one builds, others wait.
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_debian_tar(
    cache_dir: Path, name: str, tar_path: Path, prefix: str, packages: Sequence[str]
) -> None:
    if shutil.which("debootstrap") is None:
        raise DebootstrapMissing(
            "debootstrap is not installed: it is needed once to build the cached Debian test tree "
            f"{tar_path} (apt-get install debootstrap)"
        )
    if os.geteuid() != 0:
        raise PermissionError("building the Debian test tree needs root (debootstrap, chown)")
    work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=cache_dir))
    try:
        root = work / "root"
        cmd = [
            "debootstrap",
            f"--variant={DEBIAN_VARIANT}",
            f"--include={','.join(packages)}",
            DEBIAN_SUITE,
            str(root),
            DEBIAN_MIRROR,
        ]
        started = time.monotonic()
        proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed with exit {proc.returncode}:\n{proc.stdout[-4000:]}")
        debootstrap_seconds = time.monotonic() - started
        _convert_to_ostree_layout(root)
        tmp_tar = work / "tree.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--sort=name", "-cf", str(tmp_tar), "-C", str(root), "."],
            check=True,
        )
        # Build facts for whoever wonders what the cache costs (CI time, disk).
        info = cache_dir / f"{name}.info"
        info.write_text(
            f"debootstrap_seconds={debootstrap_seconds:.1f}\n"
            f"build_seconds={time.monotonic() - started:.1f}\n"
            f"entries={count_entries(root)}\n"
            f"tar_bytes={tmp_tar.stat().st_size}\n"
            f"packages={','.join(packages)}\n"
            f"mirror={DEBIAN_MIRROR}\n"
        )
        # The tar appears under its final name only when complete: a killed build leaves none.
        tmp_tar.rename(tar_path)
        # Trees of older recipes are dead weight (~300 MB each with their extraction).
        for old in cache_dir.glob(f"{prefix}*"):
            recipe = old.name[len(prefix) :].split(".")[0]
            if re.fullmatch(r"[0-9a-f]{16}", recipe) and not old.name.startswith(name):
                _remove_tree(old)
    finally:
        _remove_tree(work)


def _convert_to_ostree_layout(root: Path) -> None:
    """Turn a debootstrapped root into what an ostree commit of an OS looks like."""
    # Nothing may stay mounted from debootstrap's chroot before we start deleting.
    _unmount_under(root)

    # Default configuration lives in /usr/etc; ostree merges it into each deployment's /etc.
    (root / "etc").rename(root / "usr/etc")
    etc = root / "usr/etc"
    # Identity and host-derived files: machine-id is made on first boot, and debootstrap copies
    # the build host's hostname and resolver into the chroot.
    (etc / "machine-id").write_bytes(b"")
    (etc / "hostname").write_text("localhost\n")
    (etc / "hostname").chmod(0o644)
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_bytes(b"")
    for backup in ("passwd-", "group-", "shadow-", "gshadow-", ".pwd.lock"):
        (etc / backup).unlink(missing_ok=True)
    # The last-password-change field is the build day; pin it so rebuilds give the same tree.
    for name in ("shadow",):
        path = etc / name
        if path.exists():
            lines = []
            for line in path.read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    fields[2] = "19000"
                lines.append(":".join(fields))
            st = path.stat()
            path.write_text("\n".join(lines) + "\n")
            os.chown(path, st.st_uid, st.st_gid)
            path.chmod(stat.S_IMODE(st.st_mode))

    # Docs, man pages and translations are half the files and nothing in tests reads them;
    # slim Debian images drop them the same way (copyright files are kept).
    share = root / "usr/share"
    for sub in ("man", "info", "locale"):
        if (share / sub).exists():
            _empty_dir(share / sub)
    doc = share / "doc"
    if doc.exists():
        for pkg in doc.iterdir():
            if pkg.is_dir() and not pkg.is_symlink():
                for entry in pkg.iterdir():
                    if entry.name != "copyright":
                        _remove_tree(entry)

    # Fake kernel: test sysroots are never booted, ostree only needs the files to exist.
    modules = root / "usr/lib/modules" / KERNEL_VERSION
    modules.mkdir(parents=True, exist_ok=True)
    modules.chmod(0o755)
    modules.parent.chmod(0o755)
    (modules / "vmlinuz").write_bytes(KERNEL_BYTES)
    (modules / "initramfs.img").write_bytes(INITRAMFS_BYTES)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/tmpfiles.d/tether-var.conf").write_text(TMPFILES_VAR_CONF)

    # ostree refuses device nodes, and /boot is written by ostree itself at deploy time.
    for d in ("boot", "dev", "proc", "sys", "run", "tmp", "var"):
        _empty_dir(root / d)
    links = dict(OSTREE_LINKS)
    links.update({"opt": "var/opt", "srv": "var/srv", "mnt": "var/mnt", "media": "run/media"})
    for name, target in links.items():
        path = root / name
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            _remove_tree(path)
        path.symlink_to(target)
    (root / "sysroot").mkdir(exist_ok=True)
    for name, mode in EMPTY_DIRS.items():
        (root / name).chmod(mode)

    specials = special_files(root)
    if specials:
        raise RuntimeError(f"special files left in the converted tree: {specials[:10]}")


def special_files(root: Path) -> list[Path]:
    """Device nodes, fifos and sockets under ``root`` (ostree cannot commit them)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                found.append(Path(dirpath, name))
    return found


def _empty_dir(path: Path) -> None:
    for entry in path.iterdir():
        _remove_tree(entry)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    # rmtree would descend into a /proc or /sys left mounted by a killed debootstrap.
    _unmount_under(path)
    shutil.rmtree(path)


def _unmount_under(path: Path) -> None:
    prefix = os.path.realpath(path)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    # Deepest first, so nested mounts come off before their parents.
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=True)


def _extract(tar_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--same-owner",
            "--same-permissions",
            "-xf",
            str(tar_path),
            "-C",
            str(dest),
        ],
        check=True,
    )


# --- ostree ----------------------------------------------------------------------------------


def init_repo(path: Path, mode: str = "archive") -> Path:
    """Create an ostree repository at ``path`` (``archive``, ``bare``, ``bare-user``...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ostree", f"--repo={path}", "init", f"--mode={mode}"], check=True)
    return path


def commit_tree(
    repo: Path,
    root: Path,
    ref: str,
    *,
    subject: str = "",
    version: str | None = None,
    timestamp: int | None = None,
    metadata: Mapping[str, str] | None = None,
    parent: str | None = None,
    ref_binding: bool = True,
    xattrs: bool = False,
    gpg_key: str | None = None,
    gpg_homedir: Path | None = None,
) -> str:
    """Commit directory ``root`` to ``ref`` in ``repo`` with its ownership; return the checksum.

    ``parent`` is ostree's default when None (the ref's current commit), or a checksum, or
    ``"none"`` for a commit without parent.  Extended attributes are left out unless ``xattrs``,
    so the checksum does not depend on the filesystem (or SELinux policy) of the test host.
    The ostree CLI records ``ref`` in ``ostree.ref-binding`` (so the ref is part of the checksum);
    ``ref_binding=False`` leaves that key out, as older or other build tools do.
    """
    cmd = [
        "ostree",
        f"--repo={repo}",
        "commit",
        f"--branch={ref}",
        f"--tree=dir={root}",
        f"--subject={subject}",
    ]
    if version is not None:
        cmd.append(f"--add-metadata-string=version={version}")
    for key, value in (metadata or {}).items():
        cmd.append(f"--add-metadata-string={key}={value}")
    if timestamp is not None:
        cmd.append(f"--timestamp=@{timestamp}")
    if parent is not None:
        cmd.append(f"--parent={parent}")
    if not ref_binding:
        cmd.append("--no-bindings")
    if not xattrs:
        cmd.append("--no-xattrs")
    if gpg_key is not None:
        cmd.append(f"--gpg-sign={gpg_key}")
        if gpg_homedir is not None:
            cmd.append(f"--gpg-homedir={gpg_homedir}")
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return proc.stdout.strip().splitlines()[-1]


def update_summary(repo: Path) -> None:
    """Regenerate the repo summary (what remotes list refs from)."""
    subprocess.run(["ostree", f"--repo={repo}", "summary", "--update"], check=True)


def tree_path(root: Path, path: str) -> Path:
    """Where ``path`` (absolute, as seen on the deployed system) is in the tree at ``root``.

    Symlinks are followed inside ``root`` as if it were ``/``, and ``/etc`` is read from
    ``/usr/etc``: Debian's ``/etc/os-release -> ../usr/lib/os-release`` only resolves this way.
    """

    def physical(logical: list[str]) -> Path:
        if logical[:1] == ["etc"]:
            logical = ["usr", *logical]
        return root.joinpath(*logical)

    parts = [p for p in path.split("/") if p not in ("", ".")]
    logical: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if logical:
                logical.pop()
            continue
        logical.append(part)
        candidate = physical(logical)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many levels of symbolic links resolving {path} in {root}")
            target = os.readlink(candidate)
            logical.pop()
            if target.startswith("/"):
                logical = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return physical(logical)


def count_entries(root: Path) -> int:
    """Files, directories and symlinks under ``root`` (not counting ``root``)."""
    return sum(len(d) + len(f) for _, d, f in os.walk(root))
