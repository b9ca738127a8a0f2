"""libostree, the one place tether talks to it.

Every `gi.repository.OSTree` call lives in this module: repositories (open,
pull with progress, commit metadata, reading a commit's tree without checking
it out, composing a commit on a `MutableTree`), and sysroots (load, lock,
deploy without touching the boot list, write the deployment list). The rest of
tether sees plain Python values: checksums as hex strings, metadata as dicts,
deployments as `Deployment` records. GLib errors become `TetherError`s here.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib

# Typed as Any: the published OSTree stubs lag the typelib (no new_and_connect,
# non-nullable arguments libostree accepts as NULL).
OSTree: Any = importlib.import_module("gi.repository.OSTree")

from tether.edge.run import run
from tether.errors import LockTimeoutError, TetherError, UsageError, VerificationError
from tether.plan.tree import TreeDir, TreeEdit, TreeFile, TreeRemove, TreeSubtree, TreeSymlink

MetadataValue = str | int | bool | list[str]

log = logging.getLogger("tether")


class OstreeError(TetherError):
    """A libostree operation failed."""


@contextlib.contextmanager
def _glib_errors(what: str) -> Iterator[None]:
    try:
        yield
    except GLib.Error as e:
        raise OstreeError(f"{what}: {e.message}") from e


@contextlib.contextmanager
def _stdout_to_log(what: str) -> Iterator[None]:
    """libostree's cleanup g_print()s "Freed objects: ..." on fd 1; keep our stdout ours."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                log.info("%s: %s", what, line)


def _variant(value: MetadataValue) -> GLib.Variant:
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("t", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    return GLib.Variant("as", list(value))


def _metadata_variant(metadata: Mapping[str, MetadataValue]) -> GLib.Variant:
    return GLib.Variant("a{sv}", {k: _variant(v) for k, v in sorted(metadata.items())})


def _hex(checksum_bytes: Any) -> str:
    return str(OSTree.checksum_from_bytes(bytes(checksum_bytes)))


# --- repositories -----------------------------------------------------------------


@dataclass(frozen=True)
class CommitInfo:
    checksum: str
    timestamp: int
    subject: str
    metadata: dict[str, Any]
    partial: bool

    @property
    def version(self) -> str | None:
        value = self.metadata.get("version")
        return value if isinstance(value, str) else None


class Repo:
    """An ostree repository on disk."""

    def __init__(self, path: Path, handle: Any | None = None) -> None:
        self.path = path
        if handle is None:
            handle = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
            with _glib_errors(f"opening repository {path}"):
                handle.open(None)
        self._repo = handle

    @classmethod
    def create(cls, path: Path, mode: str = "archive") -> Repo:
        path.mkdir(parents=True, exist_ok=True)
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(path)))
        modes = {"archive": OSTree.RepoMode.ARCHIVE, "bare": OSTree.RepoMode.BARE}
        with _glib_errors(f"creating repository {path}"):
            repo.create(modes[mode], None)
        return cls(path, repo)

    @classmethod
    def open_or_create(cls, path: Path, mode: str = "archive") -> Repo:
        if (path / "config").exists():
            return cls(path)
        return cls.create(path, mode)

    # -- refs and commits

    def resolve(self, rev: str) -> str | None:
        with _glib_errors(f"resolving {rev}"):
            _, checksum = self._repo.resolve_rev(rev, True)
        return str(checksum) if checksum else None

    def refs(self, prefix: str | None = None) -> dict[str, str]:
        with _glib_errors("listing refs"):
            _, refs = self._repo.list_refs(prefix, None)
        if prefix:
            # libostree strips the prefix from the names it returns
            return {f"{prefix.rstrip('/')}/{k}" if k else prefix: str(v) for k, v in refs.items()}
        return {str(k): str(v) for k, v in refs.items()}

    def set_ref(self, ref: str, checksum: str | None, remote: str | None = None) -> None:
        with _glib_errors(f"setting ref {ref}"):
            self._repo.set_ref_immediate(remote, ref, checksum, None)

    def has_commit(self, checksum: str) -> bool:
        with _glib_errors(f"looking up commit {checksum}"):
            _ok, variant = self._repo.load_variant_if_exists(OSTree.ObjectType.COMMIT, checksum)
        return variant is not None

    def commit(self, rev: str) -> CommitInfo:
        checksum = self.resolve(rev)
        if checksum is None:
            raise OstreeError(f"no commit {rev} in {self.path}")
        with _glib_errors(f"loading commit {checksum}"):
            _, variant, state = self._repo.load_commit(checksum)
        metadata = variant.get_child_value(0).unpack()
        return CommitInfo(
            checksum=checksum,
            timestamp=int(OSTree.commit_get_timestamp(variant)),
            subject=str(variant.get_child_value(3).unpack()),
            metadata=dict(metadata),
            partial=bool(state & OSTree.RepoCommitState.PARTIAL),
        )

    def tree(self, rev: str) -> RepoTree:
        with _glib_errors(f"reading commit {rev}"):
            _, root, checksum = self._repo.read_commit(rev, None)
        return RepoTree(self._repo, root, checksum)

    def verify_metadata(self, rev: str) -> None:
        """Check a commit's metadata objects (commit, dirtrees, dirmetas) against their checksums.

        A pull skips objects the repository has, and reading a tree does not check
        them, so a corrupted local dirtree would read as a wrong tree. File contents
        are not checked here: that is `ostree fsck`'s job.
        """
        checksum = self.resolve(rev)
        if checksum is None:
            raise OstreeError(f"no commit {rev} in {self.path}")
        # walk the directories from the root, not every reachable object: the cost
        # follows the number of directories, not of files
        try:
            self._repo.fsck_object(OSTree.ObjectType.COMMIT, checksum, None)
            root_tree, root_meta = self.root_checksums(checksum)
            metas = {root_meta}
            pending, seen = [root_tree], {root_tree}
            while pending:
                tree = pending.pop()
                self._repo.fsck_object(OSTree.ObjectType.DIR_TREE, tree, None)
                _, variant = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, tree)
                subdirs = variant.get_child_value(1)
                for index in range(subdirs.n_children()):
                    entry = subdirs.get_child_value(index)
                    sub_tree = str(OSTree.checksum_from_bytes_v(entry.get_child_value(1)))
                    metas.add(str(OSTree.checksum_from_bytes_v(entry.get_child_value(2))))
                    if sub_tree not in seen:
                        seen.add(sub_tree)
                        pending.append(sub_tree)
            for meta in metas:
                self._repo.fsck_object(OSTree.ObjectType.DIR_META, meta, None)
        except (GLib.Error, OstreeError) as e:
            message = e.message if isinstance(e, GLib.Error) else str(e)
            raise OstreeError(
                f"commit {checksum[:12]} is corrupted in repository {self.path}: {message}; "
                f"delete the corrupted object (ostree fsck --repo={self.path} --delete) and run again"
            ) from e

    def root_checksums(self, checksum: str) -> tuple[str, str]:
        """The (dirtree, dirmeta) checksums of a commit's root directory."""
        with _glib_errors(f"loading commit {checksum}"):
            _, variant = self._repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        contents = OSTree.checksum_from_bytes_v(variant.get_child_value(6))
        meta = OSTree.checksum_from_bytes_v(variant.get_child_value(7))
        return str(contents), str(meta)

    # -- writing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with _glib_errors("starting a transaction"):
            self._repo.prepare_transaction(None)
        try:
            yield
        except BaseException:
            with contextlib.suppress(GLib.Error):
                self._repo.abort_transaction(None)
            raise
        with _glib_errors("committing the transaction"):
            self._repo.commit_transaction(None)

    def _commit(
        self,
        mtree: Any,
        fill: Callable[[], None],
        *,
        what: str,
        ref: str | None,
        parent: str | None,
        subject: str,
        metadata: Mapping[str, MetadataValue],
        timestamp: int,
    ) -> str:
        """One transaction: `fill` writes the objects into `mtree`, then the commit and its ref."""
        with self.transaction(), _glib_errors(what):
            fill()
            _, root = self._repo.write_mtree(mtree, None)
            _, checksum = self._repo.write_commit_with_time(
                parent, subject, None, _metadata_variant(metadata), root, timestamp, None
            )
            if ref:
                self._repo.transaction_set_ref(None, ref, checksum)
        return str(checksum)

    def commit_directory(
        self,
        directory: Path,
        *,
        ref: str | None,
        subject: str,
        metadata: Mapping[str, MetadataValue],
        timestamp: int,
        parent: str | None = None,
        canonical: bool = False,
    ) -> str:
        """Commit a directory as it is on disk (owners, modes and xattrs kept unless `canonical`)."""
        flags = OSTree.RepoCommitModifierFlags.NONE
        if canonical:
            flags = (
                OSTree.RepoCommitModifierFlags.CANONICAL_PERMISSIONS
                | OSTree.RepoCommitModifierFlags.SKIP_XATTRS
            )
        modifier = OSTree.RepoCommitModifier.new(flags, None, None)
        mtree = OSTree.MutableTree.new()

        def fill() -> None:
            self._repo.write_directory_to_mtree(Gio.File.new_for_path(str(directory)), mtree, modifier, None)

        return self._commit(
            mtree,
            fill,
            what=f"committing {directory}",
            ref=ref,
            parent=parent,
            subject=subject,
            metadata=metadata,
            timestamp=timestamp,
        )

    def compose(
        self,
        base: str,
        edits: Iterable[TreeEdit],
        *,
        ref: str | None,
        subject: str,
        metadata: Mapping[str, MetadataValue],
        timestamp: int,
    ) -> str:
        """A new commit: `base`'s tree with `edits` applied, without checking anything out.

        The MutableTree loads directories lazily from `base`, so the cost depends on
        what the edits touch, not on the size of the OS.
        """
        with _glib_errors(f"loading {base}"):
            mtree = OSTree.MutableTree.new_from_commit(self._repo, base)

        def fill() -> None:
            editor = _TreeEditor(self._repo, mtree)
            for edit in edits:
                editor.apply(edit)

        return self._commit(
            mtree,
            fill,
            what="composing",
            ref=ref,
            parent=None,
            subject=subject,
            metadata=metadata,
            timestamp=timestamp,
        )

    def checkout_to_read(self, rev: str, destination: Path) -> None:
        """Check a commit out in-process, to be read only: files may be hardlinks into the repository."""
        checksum = self.resolve(rev)
        if checksum is None:
            raise OstreeError(f"no commit {rev} in {self.path}")
        with _glib_errors(f"checking out {rev} to {destination}"):
            self._repo.checkout_at(None, -100, str(destination), checksum, None)

    def checkout(self, rev: str, destination: Path) -> None:
        """Check a commit out as real copies, never hardlinks into the repository.

        Through the CLI: the checkout options struct is awkward to fill through
        introspection (its mode field does not take the enum).
        """
        checksum = self.resolve(rev)
        if checksum is None:
            raise OstreeError(f"no commit {rev} in {self.path}")
        user = ["--user-mode"] if os.geteuid() != 0 else []
        run(["ostree", f"--repo={self.path}", "checkout", "--force-copy", *user, checksum, str(destination)])

    # -- remotes

    def remote_add(self, name: str, url: str, *, gpg_verify: bool, replace: bool = False) -> None:
        options = _metadata_variant({"gpg-verify": gpg_verify, "gpg-verify-summary": False})
        change = OSTree.RepoRemoteChange.REPLACE if replace else OSTree.RepoRemoteChange.ADD_IF_NOT_EXISTS
        with _glib_errors(f"adding remote {name}"):
            self._repo.remote_change(None, change, name, url, options, None)

    def remote_delete(self, name: str) -> None:
        with _glib_errors(f"removing remote {name}"):
            self._repo.remote_change(None, OSTree.RepoRemoteChange.DELETE_IF_EXISTS, name, None, None, None)

    def remote_url(self, name: str) -> str | None:
        try:
            _, url = self._repo.remote_get_url(name)
        except GLib.Error:
            return None
        return str(url)

    def remote_gpg_verify(self, name: str) -> bool:
        with _glib_errors(f"reading remote {name}"):
            _, verify = self._repo.remote_get_gpg_verify(name)
        return bool(verify)

    def remotes(self) -> list[str]:
        return [str(r) for r in (self._repo.remote_list() or [])]

    def remote_gpg_import(self, name: str, keyfile: Path) -> int:
        stream = Gio.File.new_for_path(str(keyfile)).read(None)
        with _glib_errors(f"importing GPG keys from {keyfile}"):
            _, imported = self._repo.remote_gpg_import(name, stream, None, None)
        return int(imported)

    def pull(
        self, remote: str, refs: list[str], *, commit_only: bool = False, progress: bool = False
    ) -> None:
        flags = OSTree.RepoPullFlags.COMMIT_ONLY if commit_only else OSTree.RepoPullFlags.NONE
        options = GLib.Variant(
            "a{sv}", {"refs": GLib.Variant("as", refs), "flags": GLib.Variant("i", int(flags))}
        )
        console = _ConsoleProgress() if progress else None
        async_progress = OSTree.AsyncProgress.new_and_connect(console.changed, None) if console else None
        try:
            self._repo.pull_with_options(remote, options, async_progress, None)
        except GLib.Error as e:
            message = f"pulling {', '.join(refs)} from {remote}: {e.message}"
            if any(word in e.message for word in ("GPG", "signature", "Signature")):
                raise VerificationError(message) from e
            raise OstreeError(message) from e
        finally:
            if async_progress is not None and console is not None:
                async_progress.finish()
                console.done()

    def sign_commit(self, checksum: str, key_id: str, homedir: Path | None = None) -> None:
        with _glib_errors(f"signing {checksum} with GPG key {key_id}"):
            self._repo.sign_commit(checksum, key_id, str(homedir) if homedir else None, None)

    def regenerate_summary(self) -> None:
        with _glib_errors("updating the summary"):
            self._repo.regenerate_summary(None, None)


class _ConsoleProgress:
    """Pull progress on a terminal: one rewritten line, like `ostree pull`."""

    def __init__(self) -> None:
        self._shown = False

    def changed(self, progress: Any, *_: Any) -> None:
        status = progress.get_status()
        if status:
            line = str(status)
        else:
            fetched = progress.get_uint("fetched")
            requested = progress.get_uint("requested")
            received = progress.get_uint64("bytes-transferred")
            line = f"Receiving objects: {fetched}/{requested} ({received / 1048576:.1f} MiB)"
        sys.stderr.write("\r\x1b[K" + line)
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class _TreeEditor:
    """Applies `TreeEdit`s to a MutableTree, writing the objects they need."""

    def __init__(self, repo: Any, mtree: Any) -> None:
        self._repo = repo
        self._root = mtree
        self._default_dirmeta = self._dirmeta(0o755, 0, 0)

    def _dirmeta(self, mode: int, uid: int, gid: int) -> str:
        info = Gio.FileInfo.new()
        info.set_file_type(Gio.FileType.DIRECTORY)
        info.set_attribute_uint32("unix::uid", uid)
        info.set_attribute_uint32("unix::gid", gid)
        info.set_attribute_uint32("unix::mode", stat.S_IFDIR | mode)
        variant = OSTree.create_directory_metadata(info, None)
        _, checksum = self._repo.write_metadata(OSTree.ObjectType.DIR_META, None, variant, None)
        return _hex(checksum)

    def _lookup(self, directory: Any, name: str) -> tuple[str | None, Any | None]:
        try:
            _, file_checksum, subdir = directory.lookup(name)
        except GLib.Error as e:
            if e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.NOT_FOUND):
                return None, None
            raise
        return file_checksum, subdir

    def _parent(self, path: PurePosixPath) -> Any:
        directory = self._root
        for name in path.parts[:-1]:
            file_checksum, subdir = self._lookup(directory, name)
            if file_checksum is not None:
                raise UsageError(f"cannot write /{path}: /{path.parent} is not a directory in the OS tree")
            if subdir is None:
                _, subdir = directory.ensure_dir(name)
                subdir.set_metadata_checksum(self._default_dirmeta)
            directory = subdir
        return directory

    def _replace(self, path: PurePosixPath, checksum: str) -> None:
        parent = self._parent(path)
        _, subdir = self._lookup(parent, path.name)
        if subdir is not None:
            parent.remove(path.name, False)
        parent.replace_file(path.name, checksum)

    def apply(self, edit: TreeEdit) -> None:
        if isinstance(edit, TreeFile):
            checksum = self._repo.write_regfile_inline(
                None, edit.uid, edit.gid, stat.S_IFREG | edit.mode, None, list(edit.content), None
            )
            self._replace(edit.path, str(checksum))
        elif isinstance(edit, TreeSymlink):
            checksum = self._repo.write_symlink(None, 0, 0, None, edit.target, None)
            self._replace(edit.path, str(checksum))
        elif isinstance(edit, TreeDir):
            parent = self._parent(edit.path)
            file_checksum, _ = self._lookup(parent, edit.path.name)
            if file_checksum is not None:
                parent.remove(edit.path.name, False)
            _, subdir = parent.ensure_dir(edit.path.name)
            subdir.set_metadata_checksum(self._dirmeta(edit.mode, edit.uid, edit.gid))
        elif isinstance(edit, TreeSubtree):
            parent = self._parent(edit.path)
            parent.remove(edit.path.name, True)
            _, subdir = parent.ensure_dir(edit.path.name)
            subdir.set_contents_checksum(edit.dirtree)
            subdir.set_metadata_checksum(edit.dirmeta)
        elif isinstance(edit, TreeRemove):
            parent = self._parent(edit.path)
            parent.remove(edit.path.name, True)
        else:  # pragma: no cover - exhaustive
            raise TypeError(edit)


class RepoTree:
    """Read access to a commit's tree without checking it out."""

    def __init__(self, repo: Any, root: Any, checksum: str) -> None:
        self._repo = repo
        self._root = root
        self.checksum = checksum

    def _file(self, path: PurePosixPath | str) -> Any:
        relative = str(path).lstrip("/")
        return self._root.resolve_relative_path(relative) if relative else self._root

    def _info(self, path: PurePosixPath | str) -> Any | None:
        try:
            return self._file(path).query_info(
                "standard::*,unix::*", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
            )
        except GLib.Error:
            return None

    def kind(self, path: PurePosixPath | str) -> str | None:
        """'file', 'directory', 'symlink' or None when absent (symlinks are not followed)."""
        info = self._info(path)
        if info is None:
            return None
        return {
            Gio.FileType.REGULAR: "file",
            Gio.FileType.DIRECTORY: "directory",
            Gio.FileType.SYMBOLIC_LINK: "symlink",
        }.get(info.get_file_type(), "other")

    def read(self, path: PurePosixPath | str) -> bytes | None:
        if self.kind(path) != "file":
            return None
        # not load_contents(): GLib asks the repo's stream for file info and logs a critical
        file = self._file(path)
        file.ensure_resolved()
        _, stream, _, _ = self._repo.load_file(file.get_checksum(), None)
        chunks = []
        while chunk := stream.read_bytes(65536, None).get_data():
            chunks.append(bytes(chunk))
        stream.close(None)
        return b"".join(chunks)

    def readlink(self, path: PurePosixPath | str) -> str | None:
        info = self._info(path)
        if info is None or info.get_file_type() != Gio.FileType.SYMBOLIC_LINK:
            return None
        return str(info.get_symlink_target())

    def listdir(self, path: PurePosixPath | str) -> list[str]:
        if self.kind(path) != "directory":
            return []
        enumerator = self._file(path).enumerate_children(
            "standard::name", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
        )
        names = []
        while (info := enumerator.next_file(None)) is not None:
            names.append(str(info.get_name()))
        return sorted(names)


# --- sysroots ----------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """One deployment as tether reports and manipulates it."""

    stateroot: str
    checksum: str
    serial: int
    index: int
    booted: bool
    staged: bool
    pinned: bool
    kernel_arguments: tuple[str, ...]
    origin: dict[str, dict[str, str]]
    handle: Any = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.checksum}.{self.serial}"

    def origin_value(self, group: str, key: str) -> str | None:
        return self.origin.get(group, {}).get(key)


def _keyfile_to_dict(keyfile: Any) -> dict[str, dict[str, str]]:
    if keyfile is None:
        return {}
    groups, _ = keyfile.get_groups()
    result: dict[str, dict[str, str]] = {}
    for group in groups:
        keys, _ = keyfile.get_keys(group)
        result[group] = {key: keyfile.get_string(group, key) for key in keys}
    return result


def split_kargs(options: str) -> tuple[str, ...]:
    return tuple(word for word in options.split() if not word.startswith("ostree="))


# ioctl numbers for the inode flags (linux/fs.h): ostree makes deployment roots immutable
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10


def clear_immutable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        flags = bytearray(4)
        try:
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        except OSError:
            return  # the file system has no inode flags
        value = int.from_bytes(flags, sys.byteorder)
        if value & _FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (value & ~_FS_IMMUTABLE_FL).to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)


class Sysroot:
    """An ostree sysroot: `/` on a booted system, or an offline directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(path)))
        self._locked = False

    @classmethod
    def initialize(cls, path: Path, stateroot: str) -> Sysroot:
        """`ostree admin init-fs` + `os-init`: idempotent."""
        path.mkdir(parents=True, exist_ok=True)
        sysroot = cls(path)
        with _glib_errors(f"initialising sysroot {path}"):
            sysroot._sysroot.ensure_initialized(None)
            sysroot._sysroot.load(None)
            sysroot._sysroot.init_osname(stateroot, None)
        for name in ("dev", "proc", "run", "sys", "tmp", "home", "root"):
            (path / name).mkdir(exist_ok=True)
        return sysroot

    def is_initialized(self) -> bool:
        return (self.path / "ostree" / "repo" / "config").exists()

    def load(self) -> None:
        if not self.is_initialized():
            raise UsageError(f"{self.path} is not an ostree sysroot (no ostree/repo); use 'tether install'")
        with _glib_errors(f"loading sysroot {self.path}"):
            self._sysroot.load(None)

    def reload(self) -> None:
        with _glib_errors(f"reloading sysroot {self.path}"):
            self._sysroot.load_if_changed(None)

    def lock(self, timeout: float, on_wait: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        warned = False
        while True:
            with _glib_errors("taking the sysroot lock"):
                _, acquired = self._sysroot.try_lock()
            if acquired:
                self._locked = True
                return
            if not warned and on_wait is not None:
                on_wait()
                warned = True
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"another operation holds the lock of sysroot {self.path} (waited {timeout:g} s)"
                )
            time.sleep(0.2)

    def unlock(self) -> None:
        if self._locked:
            self._sysroot.unlock()
            self._locked = False

    @property
    def repo(self) -> Repo:
        return Repo(self.path / "ostree" / "repo", self._sysroot.repo())

    def stateroots(self) -> list[str]:
        deploy = self.path / "ostree" / "deploy"
        return sorted(p.name for p in deploy.iterdir() if p.is_dir()) if deploy.exists() else []

    def stateroot_var(self, stateroot: str) -> Path:
        return self.path / "ostree" / "deploy" / stateroot / "var"

    def _wrap(self, handle: Any, booted_handle: Any) -> Deployment:
        bootconfig = handle.get_bootconfig()
        options = bootconfig.get("options") if bootconfig is not None else None
        return Deployment(
            stateroot=str(handle.get_osname()),
            checksum=str(handle.get_csum()),
            serial=int(handle.get_deployserial()),
            index=int(handle.get_index()),
            booted=booted_handle is not None and bool(handle.equal(booted_handle)),
            staged=bool(handle.is_staged()),
            pinned=bool(handle.is_pinned()),
            kernel_arguments=split_kargs(options or ""),
            origin=_keyfile_to_dict(handle.get_origin()),
            handle=handle,
        )

    def deployments(self) -> list[Deployment]:
        booted = self._sysroot.get_booted_deployment()
        return [self._wrap(d, booted) for d in self._sysroot.get_deployments()]

    def booted(self) -> Deployment | None:
        booted = self._sysroot.get_booted_deployment()
        return self._wrap(booted, booted) if booted is not None else None

    def staged(self) -> Deployment | None:
        staged = self._sysroot.get_staged_deployment()
        return self._wrap(staged, None) if staged is not None else None

    def merge_deployment(self, stateroot: str) -> Deployment | None:
        handle = self._sysroot.get_merge_deployment(stateroot)
        if handle is None:
            return None
        return self._wrap(handle, self._sysroot.get_booted_deployment())

    def deployment_dir(self, deployment: Deployment) -> Path:
        return self.path / str(self._sysroot.get_deployment_dirpath(deployment.handle))

    def deploy_tree(
        self,
        stateroot: str,
        checksum: str,
        *,
        origin: Mapping[str, Mapping[str, str]],
        merge: Deployment | None,
        kernel_arguments: Iterable[str],
    ) -> Deployment:
        """Check out, merge /etc and write the origin; the boot list is not touched."""
        self.repo.verify_metadata(checksum)  # checkout trusts what it reads
        keyfile = GLib.KeyFile.new()
        for group, values in origin.items():
            for key, value in values.items():
                keyfile.set_string(group, key, value)
        with _glib_errors(f"deploying {checksum}"):
            _, handle = self._sysroot.deploy_tree(
                stateroot, checksum, keyfile, merge.handle if merge else None, list(kernel_arguments), None
            )
        return self._wrap(handle, self._sysroot.get_booted_deployment())

    def discard(self, deployment: Deployment) -> bool:
        """Remove a deployment that was never written to the deployment list.

        One that is in the list (the failure came after the switch) is kept, and
        so is one when the list cannot be read: an unreferenced directory is
        removed by the next run, a referenced one would not boot. True if removed.
        """
        try:
            self._sysroot.load(None)
        except GLib.Error:
            return False
        if any(d.stateroot == deployment.stateroot and d.name == deployment.name for d in self.deployments()):
            return False
        directory = self.deployment_dir(deployment)
        if directory.exists():
            clear_immutable(directory)
            shutil.rmtree(directory)
        origin = directory.with_name(directory.name + ".origin")
        origin.unlink(missing_ok=True)
        return True

    def write_deployments(self, deployments: list[Deployment]) -> None:
        with _glib_errors("writing the deployment list"), _stdout_to_log("cleanup"):
            self._sysroot.write_deployments([d.handle for d in deployments], None)
        self.reload()

    def write_origin(self, deployment: Deployment, origin: Mapping[str, Mapping[str, str]]) -> None:
        keyfile = GLib.KeyFile.new()
        for group, values in origin.items():
            for key, value in values.items():
                keyfile.set_string(group, key, value)
        with _glib_errors(f"writing the origin of {deployment.name}"):
            self._sysroot.write_origin_file(deployment.handle, keyfile, None)

    def set_pinned(self, deployment: Deployment, pinned: bool) -> None:
        with _glib_errors(f"pinning {deployment.name}"):
            self._sysroot.deployment_set_pinned(deployment.handle, pinned)

    def cleanup(self) -> None:
        with _glib_errors("cleaning up the sysroot"), _stdout_to_log("cleanup"):
            self._sysroot.cleanup(None)


def deployment_root(sysroot_path: Path, deployment: Deployment) -> Path:
    return sysroot_path / "ostree" / "deploy" / deployment.stateroot / "deploy" / deployment.name


__all__ = [
    "CommitInfo",
    "Deployment",
    "OstreeError",
    "Repo",
    "RepoTree",
    "Sysroot",
    "TreeDir",
    "TreeEdit",
    "TreeFile",
    "TreeRemove",
    "TreeSubtree",
    "TreeSymlink",
    "clear_immutable",
    "split_kargs",
]
