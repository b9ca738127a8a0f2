"""libostree, the one place tether talks to it.

Every `gi.repository.OSTree` call lives in this module: repositories (open,
pull with progress, commit metadata, reading a commit's tree without checking
it out, composing a commit on a `MutableTree`), and sysroots (load, lock,
deploy without touching the boot list, write the deployment list). The rest of
tether sees plain Python values: checksums as hex strings, metadata as dicts,
deployments as `Deployment` records. GLib errors become `TetherError`s here.
"""

from tether.edge.ostree.binding import MetadataValue, OstreeError
from tether.edge.ostree.repo import CommitInfo, Repo, RepoTree
from tether.edge.ostree.sysroot import Deployment, Sysroot, clear_immutable, deployment_root, split_kargs
from tether.plan.tree import TreeDir, TreeEdit, TreeFile, TreeRemove, TreeSubtree, TreeSymlink

__all__ = [
    "CommitInfo",
    "Deployment",
    "MetadataValue",
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
    "deployment_root",
    "split_kargs",
]
