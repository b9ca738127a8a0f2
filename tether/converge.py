"""`tether converge`: the booted deployment's machine state outside the tree, at boot.

Run by `tether-converge.service` early at every boot (offline: for the default
deployment). It reconciles /var with the deployment's own bundle (directories,
files, links, SSH authorized keys, the swap file: `tether.plan.var` decides),
runs the deployment's boot-stage steps once under the same ledger, and on the
first boot of a deployment reports the /etc edits made on the previous one
after the upgrade (they are not in this deployment: its /etc was merged at
upgrade time), keeping copies under /var/lib/tether/saved/.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

from tether import ledger
from tether.bundle.manifest import load_bundle, read_source
from tether.bundle.model import Bundle, Hook, Playbook, Stage
from tether.edge.run import run
from tether.edge.sandbox import Sandbox
from tether.errors import UsageError
from tether.etcstate import Image, diff, image_of, snapshot
from tether.plan.tree import BUNDLE_COPY
from tether.plan.var import MadeRecord, VarAction, VarResource, decide
from tether.reconcile import StepRecorder
from tether.steps import run_hook_in, run_playbook_in
from tether.sysroot import SysrootSession

Report = Callable[[str], None]
MADE_FILE = ledger.TETHER_VAR / "var-made.json"
SWAP_CHUNK = 1 << 20


@dataclass
class ConvergeResult:
    deployment: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    late_edits: list[str] = field(default_factory=list)


# --- what the deployment declares under /var ----------------------------------------------------


def _ids(etc: Path, name: str) -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    path = etc / name
    for line in path.read_text().splitlines() if path.is_file() else []:
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit():
            table[fields[0]] = (int(fields[2]), int(fields[3]) if fields[3].isdigit() else 0)
    return table


def declared_var(bundle: Bundle, etc: Path) -> dict[str, VarResource]:
    users, groups = _ids(etc, "passwd"), _ids(etc, "group")

    def uid(owner: object) -> int:
        name, number = getattr(owner, "name", None), getattr(owner, "id", None)
        return number if number is not None else users.get(str(name), (0, 0))[0]

    def gid(group: object) -> int:
        name, number = getattr(group, "name", None), getattr(group, "id", None)
        return number if number is not None else groups.get(str(name), (0, 0))[0]

    resources: dict[str, VarResource] = {}
    for d in bundle.directories:
        if d.path.is_relative_to("/var"):
            resources[str(d.path)] = VarResource(d.path, "dir", d.mode, uid(d.owner), gid(d.group))
    for f in bundle.files:
        if f.path.is_relative_to("/var"):
            content = f.content if f.content is not None else read_source(bundle, f.source)  # type: ignore[arg-type]
            resources[str(f.path)] = VarResource(f.path, "file", f.mode, uid(f.owner), gid(f.group), content)
    for link in bundle.links:
        if link.path.is_relative_to("/var"):
            resources[str(link.path)] = VarResource(link.path, "link", 0o777, 0, 0, target=link.target)
    for user in bundle.users:
        if user.ssh_authorized_keys and user.home and user.home.is_relative_to("/var"):
            u, g = users.get(user.name, (user.uid or 0, 0))
            keys = "".join(f"{k}\n" for k in user.ssh_authorized_keys).encode()
            ssh = user.home / ".ssh"
            resources.setdefault(str(user.home), VarResource(user.home, "dir", 0o700, u, g))
            resources[str(ssh)] = VarResource(ssh, "dir", 0o700, u, g)
            path = ssh / "authorized_keys"
            resources[str(path)] = VarResource(path, "file", 0o600, u, g, keys)
    if bundle.swap is not None and bundle.swap.file is not None:
        path = bundle.swap.file
        resources[str(path)] = VarResource(path, "swap", 0o600, 0, 0, size=bundle.swap.size)
    return resources


# --- tether's record of what it made ----------------------------------------------------------------


def _load_made(var: Path) -> dict[str, MadeRecord]:
    path = var / MADE_FILE
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {p: MadeRecord(p, Image(**r["image"]), r.get("swap_uuid")) for p, r in raw.items()}


def _save_made(var: Path, made: dict[str, MadeRecord]) -> None:
    data = {p: {"image": asdict(r.image), "swap_uuid": r.swap_uuid} for p, r in sorted(made.items())}
    ledger.write_atomically(var / MADE_FILE, json.dumps(data, indent=2).encode() + b"\n")


def _swap_image(path: Path) -> Image | None:
    """A swap file without hashing it: type, mode, owner, and inode+size in place of the hash."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return image_of(path)
    return Image(
        "file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, sha256=f"inode:{st.st_ino}:{st.st_size}"
    )


def swap_uuid(path: Path) -> str | None:
    """The UUID in a swap signature (mkswap's header at 1 KiB, signature at the page's end)."""
    try:
        with path.open("rb") as f:
            header = f.read(4096)
    except OSError:
        return None
    if len(header) < 4096 or header[4086:4096] != b"SWAPSPACE2":
        return None
    raw = header[1036:1052].hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _swap_active(path: Path) -> bool:
    try:
        return any(line.split()[0] == str(path) for line in Path("/proc/swaps").read_text().splitlines()[1:])
    except OSError:
        return False


def _make_swap(path: Path, size: int, online: bool) -> MadeRecord:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tether-tmp")
    # written out, not fallocated or sparse: swap files must have no holes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zeros = bytes(SWAP_CHUNK)
        remaining = size
        while remaining > 0:
            remaining -= os.write(fd, zeros[: min(SWAP_CHUNK, remaining)])
        os.fsync(fd)
    finally:
        os.close(fd)
    run(["mkswap", str(tmp)], capture=True)
    os.rename(tmp, path)
    image = _swap_image(path)
    assert image is not None
    return MadeRecord(str(path), image, swap_uuid(path))


# --- reconciling /var -------------------------------------------------------------------------------


def _write(path: Path, resource: VarResource) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if resource.kind == "dir":
        path.mkdir(exist_ok=True)
    elif resource.kind == "link":
        assert resource.target is not None
        path.symlink_to(resource.target)
        os.lchown(path, resource.uid, resource.gid)
        return
    else:
        tmp = path.with_name(f".{path.name}.tether-tmp")
        tmp.write_bytes(resource.content or b"")
        os.rename(tmp, path)
    os.chown(path, resource.uid, resource.gid)
    os.chmod(path, resource.mode)


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        if any(path.iterdir()):
            return False
        path.rmdir()
    else:
        path.unlink()
    return True


def reconcile_var(
    bundle: Bundle, etc: Path, var: Path, online: bool, result: ConvergeResult, report: Report
) -> None:
    declared = declared_var(bundle, etc)
    made = _load_made(var)
    # create parents first, remove children first
    for key in sorted(set(declared) | set(made), key=lambda p: (p.count("/"), p)):
        resource, record = declared.get(key), made.get(key)
        path = var / PurePosixPath(key).relative_to("/var")
        if (resource and resource.kind == "swap") or (record and record.swap_uuid is not None):
            _reconcile_swap(key, path, resource, record, made, online, result, report)
            continue
        current = image_of(path)
        content = resource.content if resource is not None else None
        content_sha = hashlib.sha256(content).hexdigest() if content is not None else None
        action = decide(resource, record, current, content_sha)
        if action in (VarAction.CREATE, VarAction.UPDATE):
            assert resource is not None
            _write(path, resource)
            made[key] = MadeRecord(key, image_of(path))  # type: ignore[arg-type]
            (result.created if action is VarAction.CREATE else result.updated).append(key)
        elif action is VarAction.KEEP and resource is not None and record is None and current is not None:
            pass  # someone made it as declared: it stays theirs
        elif action is VarAction.LEAVE:
            result.left.append(key)
            report(f"Left {key} alone: it is not what tether made, or was changed since")
            if resource is None:
                made.pop(key, None)
    for key in sorted(made, key=lambda p: (-p.count("/"), p)):
        if key in declared or made[key].swap_uuid is not None:
            continue
        path = var / PurePosixPath(key).relative_to("/var")
        if image_of(path) == made[key].image and _remove(path):
            result.removed.append(key)
        else:
            result.left.append(key)
            report(f"Kept {key}: no longer declared, but changed since tether made it")
        del made[key]
    _save_made(var, made)


def _reconcile_swap(
    key: str,
    path: Path,
    resource: VarResource | None,
    record: MadeRecord | None,
    made: dict[str, MadeRecord],
    online: bool,
    result: ConvergeResult,
    report: Report,
) -> None:
    current = _swap_image(path)
    ours = record is not None and current == record.image and swap_uuid(path) == record.swap_uuid
    if resource is None:
        if record is None:
            return
        if ours:
            if online and _swap_active(path):
                run(["swapoff", str(path)])
            path.unlink()
            result.removed.append(key)
        else:
            result.left.append(key)
            report(f"Kept {key}: no longer declared, but not the swap file tether made")
        made.pop(key, None)
        return
    assert resource.size is not None
    size = path.stat().st_size if current is not None else None
    if current is not None and size == resource.size and swap_uuid(path) is not None:
        return
    if current is not None and not ours:
        result.left.append(key)
        report(f"Left {key} alone: it is not the swap file tether made")
        return
    if current is not None and online and _swap_active(path):
        run(["swapoff", str(path)])
    made[key] = _make_swap(path, resource.size, online)
    (result.updated if current is not None else result.created).append(key)


# --- boot steps and late /etc edits ---------------------------------------------------------------


def run_boot_steps(
    bundle: Bundle, root: Path, var: Path, entry: ledger.LedgerEntry, report: Report
) -> ledger.LedgerEntry:
    steps: list[Hook | Playbook] = [*bundle.hooks_for(Stage.BOOT)]
    steps += [p for p in bundle.playbooks if p.stage is Stage.BOOT]
    steps.sort(key=lambda s: s.location.line or 0)
    recorder = StepRecorder(root, var)
    records = list(entry.steps)
    for step in steps:
        name = str(step.run if isinstance(step, Hook) else step.playbook)
        report(f"Running boot step {name}")
        sandbox = Sandbox.boot(root, var, bundle.root)

        def run_step(step: Hook | Playbook = step, sandbox: Sandbox = sandbox) -> None:
            if isinstance(step, Hook):
                run_hook_in(bundle, step, sandbox)
            else:
                run_playbook_in(bundle, step, root, sandbox)

        changes = recorder.run(name, run_step)
        kind = "hook" if isinstance(step, Hook) else "ansible"
        records.append(ledger.StepRecord(kind, name, Stage.BOOT.value, "ok", {}, changes))
    return replace(entry, steps=tuple(records), paths=entry.paths + tuple(recorder.records), boot_done=True)


def report_late_edits(previous_etc: Path, var: Path, entry: ledger.LedgerEntry, report: Report) -> list[str]:
    """/etc edits made on the previous deployment after the upgrade: saved and reported, once."""
    at_upgrade = ledger.read_etc_snapshot(var, entry.id)
    if at_upgrade is None or not previous_etc.is_dir():
        return []
    changes = diff(at_upgrade, snapshot(previous_etc))
    for change in changes:
        saved = ""
        if change.post is not None:
            saved = ledger.save_copy(var, entry.id, previous_etc / change.path, change.path)
        where = f"; a copy is in /var/{saved}" if saved else ""
        report(
            f"/etc/{change.path} was {change.verb} after the upgrade on the previous deployment: "
            f"not in this one{where}"
        )
    return [f"/etc/{c.path}" for c in changes]


def converge(
    sysroot_path: Path, stateroot: str | None, lock_timeout: float, report: Report
) -> ConvergeResult:
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot)
        deployments = [d for d in sysroot.deployments() if d.stateroot == stateroot]
        if not deployments:
            raise UsageError(f"stateroot {stateroot} has no deployment")
        booted = next((d for d in deployments if d.booted), None)
        current = booted or deployments[0]
        online = booted is not None
        root = sysroot.deployment_dir(current)
        var = sysroot.stateroot_var(stateroot)
        result = ConvergeResult(current.name)
        try:
            bundle = load_bundle(root / BUNDLE_COPY)
        except FileNotFoundError:
            report(f"Deployment {current.name} carries no tether bundle: nothing to converge")
            return result
        reconcile_var(bundle, root / "etc", var, online, result, report)
        ledger_id = current.origin_value("tether", "ledger-id")
        entry = ledger.read(var, ledger_id) if ledger_id else None
        if entry is not None and not entry.boot_done:
            updated = run_boot_steps(bundle, root, var, entry, report)
            previous = next((d for d in deployments if d.name != current.name), None)
            if previous is not None:
                result.late_edits = report_late_edits(
                    sysroot.deployment_dir(previous) / "etc", var, entry, report
                )
            ledger.write(var, updated)
            result.steps = [s.name for s in updated.steps if s.stage == Stage.BOOT.value]
    return result


def summary(result: ConvergeResult) -> str:
    parts = [
        f"{len(result.created)} created",
        f"{len(result.updated)} updated",
        f"{len(result.removed)} removed",
        f"{len(result.left)} left alone",
        f"{len(result.steps)} boot step(s) run",
    ]
    return f"Converged {result.deployment}: " + ", ".join(parts)


__all__ = ["ConvergeResult", "converge", "summary", "swap_uuid"]
