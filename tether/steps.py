"""Bundle steps run in the sandbox: compose hooks and deploy hooks.

Each step runs in bubblewrap through `tether.edge.sandbox`, with the bundle
bound read-only as its working directory. A step that fails, or runs past its
timeout, becomes a `StepFailedError` naming the step, where it was declared and
the tail of its output; the caller then discards what the step worked on.
"""

from __future__ import annotations

import stat
from pathlib import Path

from tether.bundle.model import Bundle, Hook
from tether.edge.sandbox import BUNDLE_MOUNT, Sandbox, run_in_sandbox
from tether.errors import CommandError, StepFailedError


def _argv(bundle: Bundle, hook: Hook) -> list[str]:
    inside = f"{BUNDLE_MOUNT}/{hook.run}"
    mode = (bundle.root / hook.run).stat().st_mode
    # a script committed without its exec bit still runs, as `sh script` would
    return [inside] if mode & stat.S_IXUSR else ["/bin/sh", inside]


def _run(bundle: Bundle, hook: Hook, sandbox: Sandbox, network: bool) -> None:
    try:
        run_in_sandbox(sandbox, _argv(bundle, hook), timeout=hook.timeout, network=network)
    except CommandError as e:
        declared = f"{bundle.manifest.name}:{hook.location.line}:{hook.location.key}"
        where = f"bundle {bundle.info.name} {bundle.info.version}, {declared}"
        raise StepFailedError(f"{hook.stage.value} hook {hook.run} ({where}) failed: {e}") from e


def run_compose_hooks(bundle: Bundle, hooks: tuple[Hook, ...], tree: Path) -> None:
    """Compose hooks work on a private copy of the tree; like rpm %post: no /var, no network."""
    for hook in hooks:
        _run(bundle, hook, Sandbox.compose(tree, bundle.root), network=False)


def run_deploy_hook(bundle: Bundle, hook: Hook, deployment: Path, var: Path) -> None:
    """A deploy hook in the new deployment: its /etc writable, /usr and /var read-only."""
    _run(bundle, hook, Sandbox.deploy(deployment, var, bundle.root), network=hook.network)
