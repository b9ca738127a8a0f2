"""Bundle steps run in the sandbox: compose hooks, deploy hooks and Ansible playbooks.

Each step runs in bubblewrap through `tether.edge.sandbox`, with the bundle
bound read-only as its working directory. Playbooks run with the OS tree's own
`ansible-playbook -c local`, as the OS ships the tool. A step that fails, or
runs past its timeout, becomes a `StepFailedError` naming the step, where it
was declared and the tail of its output; the caller then discards what the
step worked on.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from tether.bundle.model import Bundle, Hook, Location, Playbook
from tether.edge.sandbox import BUNDLE_MOUNT, Sandbox, run_in_sandbox
from tether.errors import CommandError, StepFailedError

PLAYBOOK_TIMEOUT = 3600.0

# Ansible writes its temporary files under HOME; /root lives in the read-only /var
_ANSIBLE_ENV = {
    "HOME": "/tmp",
    "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-local",
    "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-remote",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
    "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
    "ANSIBLE_DEPRECATION_WARNINGS": "0",
}

_RECAP = re.compile(
    r"^\S+\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)(?:\s+skipped=(?P<skipped>\d+))?(?:\s+rescued=(?P<rescued>\d+))?"
    r"(?:\s+ignored=(?P<ignored>\d+))?",
    re.MULTILINE,
)


@dataclass(frozen=True)
class StepResult:
    output: str
    summary: dict[str, int]


def _where(bundle: Bundle, location: Location) -> str:
    declared = f"{bundle.manifest.name}:{location.line}:{location.key}"
    return f"bundle {bundle.info.name} {bundle.info.version}, {declared}"


def _hook_argv(bundle: Bundle, hook: Hook) -> list[str]:
    inside = f"{BUNDLE_MOUNT}/{hook.run}"
    mode = (bundle.root / hook.run).stat().st_mode
    # a script committed without its exec bit still runs, as `sh script` would
    return [inside] if mode & stat.S_IXUSR else ["/bin/sh", inside]


def _run_hook(bundle: Bundle, hook: Hook, sandbox: Sandbox, network: bool) -> StepResult:
    try:
        done = run_in_sandbox(sandbox, _hook_argv(bundle, hook), timeout=hook.timeout, network=network)
    except CommandError as e:
        raise StepFailedError(
            f"{hook.stage.value} hook {hook.run} ({_where(bundle, hook.location)}) failed: {e}"
        ) from e
    return StepResult(done.stdout + done.stderr, {})


def run_compose_hooks(bundle: Bundle, hooks: tuple[Hook, ...], tree: Path) -> None:
    """Compose hooks work on a private copy of the tree; like rpm %post: no /var, no network."""
    for hook in hooks:
        _run_hook(bundle, hook, Sandbox.compose(tree, bundle.root), network=False)


def run_hook_in(bundle: Bundle, hook: Hook, sandbox: Sandbox) -> StepResult:
    return _run_hook(bundle, hook, sandbox, network=hook.network)


def run_deploy_hook(bundle: Bundle, hook: Hook, deployment: Path, var: Path) -> StepResult:
    """A deploy hook in the new deployment: its /etc writable, /usr and /var read-only."""
    return _run_hook(bundle, hook, Sandbox.deploy(deployment, var, bundle.root), network=hook.network)


def ansible_summary(output: str) -> dict[str, int]:
    """Ansible's PLAY RECAP, added up over hosts: ok, changed, failed..."""
    summary: dict[str, int] = {}
    for match in _RECAP.finditer(output):
        for key, value in match.groupdict().items():
            if value is not None:
                summary[key] = summary.get(key, 0) + int(value)
    return summary


def playbook_argv(playbook: Playbook) -> list[str]:
    argv = ["ansible-playbook", "-c", "local", "-i", "localhost,", "--limit", "localhost"]
    if playbook.extra_vars:
        argv += ["--extra-vars", json.dumps(dict(playbook.extra_vars), sort_keys=True)]
    if playbook.tags:
        argv += ["--tags", ",".join(playbook.tags)]
    argv.append(f"{BUNDLE_MOUNT}/{playbook.playbook}")
    return argv


def run_playbook(bundle: Bundle, playbook: Playbook, deployment: Path, var: Path) -> StepResult:
    return run_playbook_in(bundle, playbook, deployment, Sandbox.deploy(deployment, var, bundle.root))


def run_playbook_in(bundle: Bundle, playbook: Playbook, deployment: Path, sandbox: Sandbox) -> StepResult:
    where = f"playbook {playbook.playbook} ({_where(bundle, playbook.location)})"
    if not any((deployment / d / "ansible-playbook").exists() for d in ("usr/bin", "usr/local/bin")):
        raise StepFailedError(f"{where}: the OS tree has no ansible-playbook; the OS must ship Ansible")
    try:
        done = run_in_sandbox(
            sandbox,
            playbook_argv(playbook),
            timeout=PLAYBOOK_TIMEOUT,
            network=playbook.network,
            env=_ANSIBLE_ENV,
        )
    except CommandError as e:
        raise StepFailedError(f"{where} failed: {e}") from e
    return StepResult(done.stdout + done.stderr, ansible_summary(done.stdout))
