"""`tether bundle list`: the bundle refs of a repository and what they bind to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.compose import KEY_BUNDLE_NAME, KEY_BUNDLE_VERSION, KEY_OS_COMMITS, KEY_OS_REF
from tether.edge.ostree import Repo
from tether.errors import UsageError


def list_bundles(repo_path: Path, os_commit: str | None = None) -> list[dict[str, Any]]:
    if not (repo_path / "config").exists():
        raise UsageError(f"{repo_path} is not an ostree repository")
    repo = Repo(repo_path)
    bundles = []
    for ref, checksum in sorted(repo.refs().items()):
        if ref.startswith("tether/compose/"):
            continue
        metadata = repo.commit(checksum).metadata
        if KEY_OS_COMMITS not in metadata:
            continue
        bound = [str(c) for c in metadata[KEY_OS_COMMITS]]
        if os_commit is not None and os_commit not in bound:
            continue
        bundles.append(
            {
                "ref": ref,
                "commit": checksum,
                "name": metadata.get(KEY_BUNDLE_NAME),
                "version": metadata.get(KEY_BUNDLE_VERSION),
                "os_ref": metadata.get(KEY_OS_REF),
                "os_commits": bound,
            }
        )
    return bundles
