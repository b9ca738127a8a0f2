"""install, upgrade and switch: SPEC's upgrade, steps 1 to 6.

Pull the bundle ref, pick the OS commit it is bound to, compose, create the
deployment with `deploy_tree` (the boot list untouched), run the deploy-stage
steps inside it, and only when all of them succeeded write the deployment list
once. Any failure before that write removes the new deployment directory, so
the machine stays on its old pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tether import ledger
from tether.accounts import account_names
from tether.bundle.manifest import load_bundle
from tether.bundle.model import Bundle, Hook, Playbook, Stage
from tether.compose import (
    KEY_BUNDLE_NAME,
    KEY_BUNDLE_VERSION,
    KEY_KARGS,
    KEY_KARGS_ABSENT,
    KEY_OS_COMMITS,
    KEY_OS_REF,
    compose,
)
from tether.edge.ostree import Deployment, OstreeError, Repo, Sysroot
from tether.errors import NotBoundError, NoUpdateError, TetherError, UsageError, VerificationError
from tether.etcstate import snapshot
from tether.faults import checkpoint
from tether.health import failed_pair
from tether.plan.etc import merge_records
from tether.plan.kargs import KargPlan, plan_kargs
from tether.plan.tree import BUNDLE_COPY
from tether.reconcile import StepRecorder, finish_etc, prepare_etc, run_sysusers
from tether.steps import StepResult, run_deploy_hook, run_playbook
from tether.sysroot import SysrootSession, origin_for, remove_crash_leftovers

Report = Callable[[str], None]


@dataclass(frozen=True)
class BundleSource:
    """`NAME:REF`: a bundle ref on a remote."""

    remote: str
    ref: str

    @classmethod
    def parse(cls, text: str) -> BundleSource:
        remote, sep, ref = text.partition(":")
        if not sep or not remote or not ref:
            raise UsageError(f"bundle '{text}': expected REMOTE:REF, e.g. exampleos:exampleos/x86_64/kiosk")
        return cls(remote, ref)

    def __str__(self) -> str:
        return f"{self.remote}:{self.ref}"


@dataclass(frozen=True)
class Selection:
    bundle_commit: str
    os_commit: str
    os_ref: str
    os_head: str | None  # where the OS ref points on the remote
    note: str | None  # why the OS ref's head was not taken


@dataclass(frozen=True)
class Outcome:
    changed: bool
    message: str
    deployment: Deployment | None = None
    selection: Selection | None = None
    kargs: KargPlan | None = None


def select(repo: Repo, source: BundleSource, *, metadata_only: bool, progress: bool) -> Selection:
    """SPEC steps 1-2: the bundle ref's commit and the OS commit it selects."""
    repo.pull(source.remote, [source.ref], commit_only=metadata_only, progress=progress)
    bundle_commit = repo.resolve(f"{source.remote}:{source.ref}")
    assert bundle_commit is not None
    metadata = repo.commit(bundle_commit).metadata
    bound = [str(c) for c in metadata.get(KEY_OS_COMMITS, [])]
    os_ref = str(metadata.get(KEY_OS_REF, ""))
    if not bound:
        raise NotBoundError(f"bundle {source} ({bundle_commit[:12]}) is bound to no OS commit")

    os_head = None
    if os_ref:
        try:
            repo.pull(source.remote, [os_ref], commit_only=True, progress=progress)
            os_head = repo.resolve(f"{source.remote}:{os_ref}")
        except OstreeError:
            os_head = None
    if os_head in bound:
        assert os_head is not None
        return Selection(bundle_commit, os_head, os_ref, os_head, None)

    found: list[tuple[int, str]] = []
    for checksum in bound:
        if not repo.has_commit(checksum):
            try:
                repo.pull(source.remote, [checksum], commit_only=True, progress=progress)
            except OstreeError:
                continue
        found.append((repo.commit(checksum).timestamp, checksum))
    if not found:
        raise NotBoundError(
            f"bundle {source} ({bundle_commit[:12]}) is bound to {len(bound)} OS commit(s), "
            f"none of which can be found on remote {source.remote}"
        )
    chosen = max(found)[1]
    _check_ref_binding(repo, chosen, os_ref)
    note = None
    if os_head is not None:
        note = f"OS ref {os_ref} is at {os_head[:12]}, which bundle {source.ref} is not bound to yet"
    return Selection(bundle_commit, chosen, os_ref, os_head, note)


def _check_ref_binding(repo: Repo, os_commit: str, os_ref: str) -> None:
    # pulled by checksum, so libostree did not check it: a commit made for another ref
    # (another product, a testing branch) must not pass for one of this OS ref
    binding = [str(r) for r in repo.commit(os_commit).metadata.get("ostree.ref-binding", [])]
    if binding and os_ref not in binding:
        raise VerificationError(
            f"OS commit {os_commit[:12]} is bound to ref(s) {', '.join(binding)}, not to {os_ref}: "
            "refusing it (ostree.ref-binding)"
        )


def _check_downgrade(repo: Repo, current_os: str | None, new_os: str, allow: bool) -> None:
    if current_os is None or allow or current_os == new_os or not repo.has_commit(current_os):
        return
    if repo.commit(new_os).timestamp < repo.commit(current_os).timestamp:
        raise VerificationError(
            f"OS commit {new_os[:12]} is older than the deployed {current_os[:12]}: "
            "refusing a downgrade (use --allow-downgrade)"
        )


def pull_selected(repo: Repo, source: BundleSource, selection: Selection, progress: bool) -> None:
    """The OS commit in full; `select` (without metadata_only) already pulled the bundle in full."""
    if selection.os_commit == selection.os_head:
        repo.pull(source.remote, [selection.os_ref], progress=progress)
    else:
        repo.pull(source.remote, [selection.os_commit], progress=progress)
    checkpoint("pulled")


def deploy_pair(
    session: SysrootSession,
    stateroot: str,
    source: BundleSource,
    selection: Selection,
    *,
    merge: Deployment | None,
    admin_kargs: tuple[str, ...] = (),
    report: Report,
) -> tuple[Deployment, KargPlan]:
    """SPEC steps 3-6 for a selected pair; the deployment list is written last."""
    sysroot = session.sysroot
    repo = sysroot.repo
    var = sysroot.stateroot_var(stateroot)
    composed = compose(repo, selection.os_commit, selection.bundle_commit, bundle_ref=source.ref)
    checkpoint("composed")
    report(("Reusing" if composed.cached else "Composed") + f" commit {composed.checksum}")

    previous = _ledger_of(var, merge)
    current_kargs = merge.kernel_arguments if merge is not None else admin_kargs
    declared = repo.commit(composed.checksum).metadata.get(KEY_KARGS, [])
    absent = [str(k) for k in repo.commit(composed.checksum).metadata.get(KEY_KARGS_ABSENT, [])]
    kargs = plan_kargs(
        current_kargs, previous.kargs_added if previous else (), [str(k) for k in declared], absent
    )

    ledger_id = ledger.new_id()
    origin = origin_for(source, selection, composed.content_id, ledger_id)
    deployment = sysroot.deploy_tree(
        stateroot, composed.checksum, origin=origin, merge=merge, kernel_arguments=kargs.kernel_arguments
    )
    try:
        checkpoint("deployed-tree")
        root = sysroot.deployment_dir(deployment)
        bundle = load_bundle(root / BUNDLE_COPY)
        live_etc = sysroot.deployment_dir(merge) / "etc" if merge is not None else None
        if live_etc is not None:
            ledger.write_etc_snapshot(var, ledger_id, snapshot(live_etc))
        etc = prepare_etc(bundle, previous, live_etc, root, var, ledger_id, report)
        recorder = StepRecorder(root, var)
        accounts_before = account_names(root / "etc")
        steps = run_sysusers(bundle, root, var, recorder, report)
        steps += _run_deploy_steps(bundle, root, var, ledger_id, recorder, report)
        made = account_names(root / "etc") - accounts_before
        finish_etc(bundle, root, report)
        ledger.write(
            var,
            ledger.LedgerEntry(
                id=ledger_id,
                deployment=composed.checksum,
                bundle_commit=selection.bundle_commit,
                os_commit=selection.os_commit,
                kargs_added=kargs.added,
                steps=tuple(steps),
                paths=tuple(merge_records(recorder.records)),
                resets=tuple(etc.resets),
                conflicts=tuple(etc.conflicts),
                enforced=tuple(etc.enforced),
                accounts=tuple(sorted(made | (set(previous.accounts) if previous else set()))),
            ),
        )
        checkpoint("ledger-written")
        keep = [
            d
            for d in sysroot.deployments()
            if d.stateroot != stateroot
            or d.pinned
            or d.booted
            or (merge is not None and d.name == merge.name)
        ]
        checkpoint("before-write-deployments")
        sysroot.write_deployments([deployment, *keep])
        checkpoint("after-write-deployments")
    except BaseException:
        if sysroot.discard(deployment):  # not when the failure came after the switch
            ledger.remove(var, ledger_id)
        raise
    new = next(d for d in sysroot.deployments() if d.name == deployment.name)
    return new, kargs


def _run_deploy_steps(
    bundle: Bundle, root: Path, var: Path, ledger_id: str, recorder: StepRecorder, report: Report
) -> list[ledger.StepRecord]:
    """Deploy hooks and playbooks in declaration order, each between two snapshots of /etc."""
    steps: list[Hook | Playbook] = [*bundle.hooks_for(Stage.DEPLOY)]
    steps += [p for p in bundle.playbooks if p.stage is Stage.DEPLOY]
    steps.sort(key=lambda s: s.location.line or 0)
    records = []
    for index, step in enumerate(steps):
        result: StepResult | None = None

        def run_step(step: Hook | Playbook = step) -> None:
            nonlocal result
            if isinstance(step, Hook):
                report(f"Running deploy hook {step.run}")
                result = run_deploy_hook(bundle, step, root, var)
            else:
                report(f"Running playbook {step.playbook}")
                result = run_playbook(bundle, step, root, var)

        name = str(step.run if isinstance(step, Hook) else step.playbook)
        changes = recorder.run(name, run_step)
        assert result is not None
        log = ledger.log_path(var, ledger_id, index, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(result.output)
        if result.summary:
            recap = ", ".join(f"{k}={v}" for k, v in result.summary.items())
            report(f"  {name}: {recap}; {len(changes)} /etc path(s) changed")
        kind = "hook" if isinstance(step, Hook) else "ansible"
        records.append(ledger.StepRecord(kind, name, step.stage.value, "ok", result.summary, changes))
        checkpoint("deploy-hook-done")
    return records


def _ledger_of(var: Path, deployment: Deployment | None) -> ledger.LedgerEntry | None:
    if deployment is None:
        return None
    ledger_id = deployment.origin_value("tether", "ledger-id")
    return ledger.read(var, ledger_id) if ledger_id else None


def install(
    sysroot_path: Path,
    stateroot: str,
    *,
    remote: str,
    url: str,
    gpg_verify: bool,
    gpg_keys: list[Path],
    source: BundleSource,
    kargs: list[str],
    lock_timeout: float,
    progress: bool,
    report: Report,
) -> Outcome:
    if source.remote != remote:
        raise UsageError(f"--bundle {source}: remote '{source.remote}' is not the --remote '{remote}'")
    if not url.startswith(("file://", "http://", "https://")):
        raise UsageError(f"--remote {remote}={url}: the URL must be file://, http:// or https://")
    for key in gpg_keys:
        if not key.is_file():
            raise UsageError(f"--gpg-import {key}: no such file")
    sysroot = Sysroot(sysroot_path)
    if not sysroot.is_initialized():
        report(f"Initialising sysroot {sysroot_path} with stateroot {stateroot}")
        Sysroot.initialize(sysroot_path, stateroot)
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        if stateroot not in sysroot.stateroots():
            Sysroot.initialize(sysroot_path, stateroot)
            session.sysroot.reload()
        if any(d.stateroot == stateroot for d in sysroot.deployments()):
            raise UsageError(
                f"stateroot {stateroot} in {sysroot_path} already has deployments: "
                "use 'tether upgrade' or 'tether switch'"
            )
        repo = sysroot.repo
        existing = repo.remote_url(remote)
        if existing is not None and existing != url:
            raise UsageError(f"remote {remote} already exists with URL {existing}")
        added_remote = existing is None
        if added_remote:
            repo.remote_add(remote, url, gpg_verify=gpg_verify)
        try:
            for key in gpg_keys:
                repo.remote_gpg_import(remote, key)
            remove_crash_leftovers(sysroot, stateroot)
            selection = select(repo, source, metadata_only=False, progress=progress)
            if selection.note:
                report(selection.note)
            pull_selected(repo, source, selection, progress)
            deployment, kplan = deploy_pair(
                session, stateroot, source, selection, merge=None, admin_kargs=tuple(kargs), report=report
            )
        except BaseException:
            if added_remote:
                repo.remote_delete(remote)
            raise
    there = describe_pair(sysroot.repo, deployment.checksum)
    return Outcome(
        True,
        f"Installed {there} ({deployment.name[:12]}…); it is the default at next boot",
        deployment,
        selection,
        kplan,
    )


def upgrade(
    sysroot_path: Path,
    stateroot: str | None,
    *,
    check: bool = False,
    allow_downgrade: bool = False,
    allow_failed: bool = False,
    switch_to: BundleSource | None = None,
    lock_timeout: float,
    progress: bool,
    report: Report,
) -> Outcome:
    """`upgrade`, `upgrade --check` and `switch` (a new bundle source)."""
    with SysrootSession(sysroot_path, lock_timeout, report) as session:
        sysroot = session.sysroot
        stateroot = session.stateroot(stateroot)
        merge = sysroot.merge_deployment(stateroot)
        if merge is None:
            raise UsageError(f"stateroot {stateroot} has no deployment: use 'tether install'")
        if switch_to is not None:
            source = switch_to
        else:
            remote = merge.origin_value("tether", "remote")
            ref = merge.origin_value("tether", "bundle-ref")
            if not remote or not ref:
                raise UsageError(
                    f"deployment {merge.name} was not made by tether: "
                    "use 'tether switch REMOTE:REF' to adopt it"
                )
            source = BundleSource(remote, ref)
        if source.remote not in sysroot.repo.remotes():
            raise UsageError(f"no remote named {source.remote} in {sysroot_path}")
        if not check:
            remove_crash_leftovers(sysroot, stateroot)
        repo = sysroot.repo
        selection = select(repo, source, metadata_only=check, progress=progress)
        current = (merge.origin_value("tether", "os-commit"), merge.origin_value("tether", "bundle-commit"))
        here = describe_pair(repo, merge.checksum)
        if current == (selection.os_commit, selection.bundle_commit) and switch_to is None:
            if selection.note:
                message = f"No update: {selection.note}; staying on {here}"
            else:
                message = f"No update available: already on {here}"
            if check:
                raise NoUpdateError(message)
            return Outcome(False, message, merge, selection)
        _check_downgrade(repo, current[0], selection.os_commit, allow_downgrade)
        failed = failed_pair(sysroot.stateroot_var(stateroot), selection.os_commit, selection.bundle_commit)
        if failed is not None and not allow_failed:
            units = ", ".join(failed.get("failed_units", [])) or "boot-complete.target not reached"
            raise TetherError(
                f"refusing to deploy {failed.get('version', 'this pair')} again: it failed its health "
                f"check on this machine ({units}) and was rolled back; publish a fixed bundle, "
                "or pass --allow-failed"
            )
        if check:
            return Outcome(
                True, _check_message(repo, sysroot.stateroot_var(stateroot), merge, selection, here)
            )
        if selection.note:
            report(selection.note)
        pull_selected(repo, source, selection, progress)
        deployment, kplan = deploy_pair(session, stateroot, source, selection, merge=merge, report=report)
        there = describe_pair(repo, deployment.checksum)
    verb = "Switched" if switch_to is not None else "Upgraded"
    return Outcome(
        True,
        f"{verb} from {here} to {there} ({deployment.name[:12]}…); it is the default at next boot",
        deployment,
        selection,
        kplan,
    )


def describe_pair(repo: Repo, composed: str) -> str:
    """A deployment as an operator reads it: its version, e.g. `2+kiosk.2`."""
    try:
        version = repo.commit(composed).version
    except OstreeError:
        version = None
    return version or composed[:12]


def _check_message(repo: Repo, var: Path, merge: Deployment, selection: Selection, here: str) -> str:
    os_version = repo.commit(selection.os_commit).version or selection.os_commit[:12]
    metadata = repo.commit(selection.bundle_commit).metadata
    name, version = metadata.get(KEY_BUNDLE_NAME, "?"), metadata.get(KEY_BUNDLE_VERSION, "?")
    lines = [
        f"Update available: {here} -> {os_version}+{name}.{version}",
        f"  OS commit:     {selection.os_commit}",
        f"  bundle commit: {selection.bundle_commit}",
    ]
    if selection.note:
        lines.append(f"  note: {selection.note}")
    if KEY_KARGS in metadata:
        previous = _ledger_of(var, merge)
        plan = plan_kargs(
            merge.kernel_arguments,
            previous.kargs_added if previous else (),
            [str(k) for k in metadata[KEY_KARGS]],
        )
        for karg in plan.removed:
            lines.append(f"  karg removed: {karg}")
        for karg in plan.kernel_arguments:
            if karg not in merge.kernel_arguments:
                lines.append(f"  karg added:   {karg}")
    return "\n".join(lines)


__all__ = ["BundleSource", "Outcome", "TetherError", "install", "upgrade"]
