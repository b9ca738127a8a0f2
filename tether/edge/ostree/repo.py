"""Repositories: refs and commits, reading a tree in place, composing on a MutableTree, pulls."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gi.repository import Gio, GLib

from tether.edge.ostree.binding import (
    MetadataValue,
    OSTree,
    OstreeError,
    _glib_errors,
    _hex,
    _metadata_variant,
)
from tether.edge.run import run
from tether.errors import UsageError, VerificationError
from tether.plan.tree import TreeDir, TreeEdit, TreeFile, TreeRemove, TreeSubtree, TreeSymlink


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
