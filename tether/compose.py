"""Composition: OS commit + bundle commit → one new commit.

The composed tree is the OS tree with the bundle's tree-level content laid over
it (planned by `tether.plan.tree`) and the whole bundle copied to
/usr/share/tether/bundle/. Without compose hooks nothing is checked out: the
edits go onto a MutableTree loaded lazily from the OS commit, so the cost
depends on the bundle, not on the OS. With compose hooks, that commit is
checked out as real copies (never hardlinks into the repository), the hooks run
on the copy in bubblewrap, and the copy is committed.

A composition is named by a content id (the sha256 of its inputs) and kept
under `tether/compose/<id>`, so composing the same pair again is a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tether.bundle.manifest import load_bundle, read_source
from tether.bundle.model import Bundle, Stage
from tether.edge import ostree
from tether.edge.ostree import Repo
from tether.errors import NotBoundError, UsageError
from tether.plan.tree import BUNDLE_COPY, TreeSubtree, plan_tree

# bump when the composed tree for the same inputs changes
COMPOSE_FORMAT = 2
COMPOSE_REF_PREFIX = "tether/compose"

KEY_OS_COMMITS = "tether.os-commits"
KEY_OS_REF = "tether.os-ref"
KEY_BUNDLE_NAME = "tether.bundle-name"
KEY_BUNDLE_VERSION = "tether.bundle-version"
KEY_OS_COMMIT = "tether.os-commit"
KEY_BUNDLE_COMMIT = "tether.bundle-commit"
KEY_BUNDLE_REF = "tether.bundle-ref"
KEY_KARGS = "tether.kernel-arguments"
KEY_KARGS_ABSENT = "tether.kernel-arguments-absent"  # must not be there, even as the admin's
KEY_BINDING = "tether.bundle-os-commits"  # the bundle's binding, kept after the bundle commit is pruned

# OS commit metadata that stays true of the composed tree
_INHERITED_KEYS = ("ostree.bootable", "ostree.linux")


@dataclass(frozen=True)
class Composed:
    checksum: str
    content_id: str
    cached: bool
    os_commit: str
    bundle_commit: str


def content_id(os_commit: str, bundle_commit: str) -> str:
    inputs = {"format": COMPOSE_FORMAT, "os-commit": os_commit, "bundle-commit": bundle_commit}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def compose_ref(content: str) -> str:
    return f"{COMPOSE_REF_PREFIX}/{content}"


def bound_os_commits(repo: Repo, bundle_commit: str) -> tuple[str, ...]:
    value = repo.commit(bundle_commit).metadata.get(KEY_OS_COMMITS, [])
    return tuple(str(v) for v in value)


def checkout_bundle(repo: Repo, bundle_commit: str, destination: Path) -> Bundle:
    """The bundle as committed, checked out and validated again (it is only read)."""
    repo.checkout_to_read(bundle_commit, destination)
    return load_bundle(destination)


def compose(
    repo: Repo,
    os_rev: str,
    bundle_rev: str,
    *,
    bundle_ref: str | None = None,
    workdir: Path | None = None,
) -> Composed:
    os_commit = repo.resolve(os_rev)
    if os_commit is None:
        raise UsageError(f"no OS commit {os_rev} in {repo.path}")
    bundle_commit = repo.resolve(bundle_rev)
    if bundle_commit is None:
        raise UsageError(f"no bundle commit {bundle_rev} in {repo.path}")
    if os_commit not in bound_os_commits(repo, bundle_commit):
        raise NotBoundError(f"bundle commit {bundle_commit} is not bound to OS commit {os_commit}")
    content = content_id(os_commit, bundle_commit)
    ref = compose_ref(content)
    cached = repo.resolve(ref)
    if cached is not None:
        return Composed(cached, content, True, os_commit, bundle_commit)
    for checksum in (os_commit, bundle_commit):
        repo.verify_metadata(checksum)  # the trees are read below, and a pull does not check them

    with tempfile.TemporaryDirectory(prefix="tether-bundle-", dir=workdir) as tmp:
        bundle = checkout_bundle(repo, bundle_commit, Path(tmp) / "bundle")
        os_info = repo.commit(os_commit)
        bundle_info = repo.commit(bundle_commit)
        edits = plan_tree(bundle, repo.tree(os_commit), lambda source: read_source(bundle, source))
        dirtree, dirmeta = repo.root_checksums(bundle_commit)
        edits.append(TreeSubtree(BUNDLE_COPY, dirtree, dirmeta))

        metadata: dict[str, ostree.MetadataValue] = {
            key: os_info.metadata[key] for key in _INHERITED_KEYS if key in os_info.metadata
        }
        os_version = os_info.version or os_commit[:10]
        metadata.update(
            {
                "version": f"{os_version}+{bundle.info.name}.{bundle.info.version}",
                KEY_OS_COMMIT: os_commit,
                KEY_BUNDLE_COMMIT: bundle_commit,
                KEY_BUNDLE_REF: bundle_ref or str(bundle_info.metadata.get(KEY_BUNDLE_REF, "")),
                KEY_BUNDLE_NAME: bundle.info.name,
                KEY_BUNDLE_VERSION: bundle.info.version,
                KEY_KARGS: list(bundle.kernel.arguments),
                KEY_KARGS_ABSENT: list(bundle.kernel.absent),
                KEY_BINDING: list(bound_os_commits(repo, bundle_commit)),
            }
        )
        subject = f"{bundle.info.name} {bundle.info.version} on {os_version}"
        timestamp = max(os_info.timestamp, bundle_info.timestamp)
        hooks = bundle.hooks_for(Stage.COMPOSE)
        if not hooks:
            checksum = repo.compose(
                os_commit, edits, ref=ref, subject=subject, metadata=metadata, timestamp=timestamp
            )
        else:
            from tether.steps import run_compose_hooks

            staged = repo.compose(
                os_commit, edits, ref=None, subject=subject, metadata={}, timestamp=timestamp
            )
            tree = Path(tmp) / "tree"
            repo.checkout(staged, tree)
            run_compose_hooks(bundle, hooks, tree)
            checksum = repo.commit_directory(
                tree, ref=ref, subject=subject, metadata=metadata, timestamp=timestamp
            )
    return Composed(checksum, content, False, os_commit, bundle_commit)


def composed_metadata(repo: Repo, checksum: str) -> dict[str, object]:
    return dict(repo.commit(checksum).metadata)
