"""`tether bundle build`: commit a bundle directory with its binding.

The binding (the OS commits the bundle was tested with) is stored in the bundle
commit's metadata, `tether.os-commits`: the union of `--bind`, the commit a
`--bind-ref` points to, and `os-commits` in the manifest. A binding to a commit
the repository does not have is refused, so a typo cannot publish a bundle that
no machine could ever apply.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tether.bundle.manifest import load_bundle
from tether.compose import (
    KEY_BUNDLE_NAME,
    KEY_BUNDLE_REF,
    KEY_BUNDLE_VERSION,
    KEY_KARGS,
    KEY_KARGS_ABSENT,
    KEY_OS_COMMITS,
    KEY_OS_REF,
)
from tether.edge.ostree import Repo
from tether.errors import UsageError

_CHECKSUM = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Built:
    checksum: str
    ref: str
    os_commits: tuple[str, ...]


def build_bundle(
    directory: Path,
    repo_path: Path,
    ref: str,
    *,
    bind: list[str],
    bind_ref: str | None = None,
    gpg_sign: list[str] | None = None,
    gpg_homedir: Path | None = None,
) -> Built:
    bundle = load_bundle(directory)
    if not (repo_path / "config").exists():
        raise UsageError(f"{repo_path} is not an ostree repository")
    repo = Repo(repo_path)

    wanted = list(bundle.info.os_commits)
    for rev in bind:
        checksum = rev if _CHECKSUM.fullmatch(rev) else repo.resolve(rev)
        if checksum is None:
            raise UsageError(f"--bind {rev}: no such commit or ref in {repo_path}")
        wanted.append(checksum)
    if bind_ref is not None:
        checksum = repo.resolve(bind_ref)
        if checksum is None:
            raise UsageError(f"--bind-ref {bind_ref}: no such ref in {repo_path}")
        wanted.append(checksum)
    os_commits = tuple(dict.fromkeys(wanted))
    if not os_commits:
        raise UsageError(
            "the bundle is bound to no OS commit: give --bind COMMIT, --bind-ref REF or os-commits"
        )
    for checksum in os_commits:
        if not repo.has_commit(checksum):
            raise UsageError(f"cannot bind to OS commit {checksum}: it is not in {repo_path}")

    timestamp = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    checksum = repo.commit_directory(
        bundle.root,
        ref=ref,
        parent=repo.resolve(ref),
        subject=f"{bundle.info.name} {bundle.info.version}",
        metadata={
            "version": bundle.info.version,
            KEY_OS_COMMITS: list(os_commits),
            KEY_OS_REF: bundle.info.os_ref,
            KEY_BUNDLE_NAME: bundle.info.name,
            KEY_BUNDLE_VERSION: bundle.info.version,
            KEY_BUNDLE_REF: ref,
            # lets `upgrade --check` tell karg changes from the commit alone
            KEY_KARGS: list(bundle.kernel.arguments),
            KEY_KARGS_ABSENT: list(bundle.kernel.absent),
        },
        timestamp=timestamp,
        canonical=True,
    )
    for key_id in gpg_sign or []:
        repo.sign_commit(checksum, key_id, gpg_homedir)
    repo.regenerate_summary()
    return Built(checksum, ref, os_commits)
