"""The commands: each turns parsed arguments into library calls and prints the outcome."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tether.errors import UsageError


def _report(message: str) -> None:
    print(message, file=sys.stderr)


def _options(args: argparse.Namespace) -> tuple[Path, str | None, float]:
    return args.sysroot, args.stateroot, args.lock_timeout


def _progress() -> bool:
    return sys.stderr.isatty()


def _reboot_refused(args: argparse.Namespace) -> None:
    if getattr(args, "reboot", False) and args.sysroot.resolve() != Path("/"):
        raise UsageError("--reboot needs a running system; it is refused with an offline --sysroot")


def cmd_bundle(args: argparse.Namespace) -> int:
    if args.bundle_command == "check":
        from tether.bundle.manifest import load_bundle
        from tether.plan.tree import check_supported

        bundle = load_bundle(args.directory)
        check_supported(bundle)
        print(
            f"{bundle.manifest}: ok: bundle {bundle.info.name} {bundle.info.version}"
            f" following {bundle.info.os_ref}"
        )
        return 0
    if args.bundle_command == "build":
        from tether.build import build_bundle

        built = build_bundle(
            args.directory,
            args.repo,
            args.ref,
            bind=args.bind,
            bind_ref=args.bind_ref,
            gpg_sign=args.gpg_sign,
            gpg_homedir=args.gpg_homedir,
        )
        print(f"{built.ref} => {built.checksum} (bound to {len(built.os_commits)} OS commit(s))")
        return 0
    if args.bundle_command == "list":
        from tether.catalog import list_bundles

        bundles = list_bundles(args.repo, args.os)
        if args.json:
            print(json.dumps({"bundles": bundles}, indent=2))
        else:
            for b in bundles:
                print(f"{b['ref']}  {b['name']} {b['version']}  {b['commit'][:12]}  bound to:")
                for c in b["os_commits"]:
                    print(f"    {c}")
        return 0
    raise UsageError("bundle: give a command: check, build or list")


def cmd_compose(args: argparse.Namespace) -> int:
    from tether.compose import compose
    from tether.edge.ostree import Repo

    if not (args.repo / "config").exists():
        raise UsageError(f"{args.repo} is not an ostree repository")
    composed = compose(Repo(args.repo), args.os, args.bundle)
    state = "cached" if composed.cached else "composed"
    print(f"{state} {composed.checksum}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from tether.upgrade import BundleSource, install

    name, sep, url = args.remote.partition("=")
    if not sep or not name or not url:
        raise UsageError(f"--remote {args.remote}: expected NAME=URL")
    if not args.gpg_import and not args.no_gpg_verify:
        raise UsageError("install: give --gpg-import KEYFILE (signatures required) or --no-gpg-verify")
    if args.gpg_import and args.no_gpg_verify:
        raise UsageError("install: --gpg-import and --no-gpg-verify exclude each other")
    if args.stateroot is None:
        raise UsageError("install: give --stateroot NAME")
    outcome = install(
        args.sysroot,
        args.stateroot,
        remote=name,
        url=url,
        gpg_verify=not args.no_gpg_verify,
        gpg_keys=args.gpg_import,
        source=BundleSource.parse(args.bundle),
        kargs=args.karg,
        lock_timeout=args.lock_timeout,
        progress=_progress(),
        report=_report,
    )
    print(outcome.message)
    return 0


def cmd_upgrade(args: argparse.Namespace, switch: bool = False) -> int:
    from tether.upgrade import BundleSource, upgrade

    if getattr(args, "auto", False):
        from tether.autoupdate import Policy, read_policy
        from tether.edge.ostree import Sysroot
        from tether.sysroot import resolve_stateroot

        sysroot = Sysroot(args.sysroot)
        sysroot.load()
        merge = sysroot.merge_deployment(resolve_stateroot(sysroot, args.stateroot))
        policy = read_policy(sysroot.deployment_dir(merge)) if merge is not None else Policy.NONE
        if policy is Policy.NONE:
            print("Automatic upgrades are off (policy none in /etc/tether/upgrade.conf).")
            return 0
        args.check = policy is Policy.CHECK
        args.reboot = policy is Policy.APPLY
    _reboot_refused(args)
    if getattr(args, "preview", False):
        from tether.preview import preview

        shown = preview(
            args.sysroot, args.stateroot, lock_timeout=args.lock_timeout, progress=_progress(), report=_report
        )
        print("\n".join(shown.lines()))
        return 0
    outcome = upgrade(
        args.sysroot,
        args.stateroot,
        check=getattr(args, "check", False),
        allow_downgrade=args.allow_downgrade,
        allow_failed=getattr(args, "allow_failed", False),
        switch_to=BundleSource.parse(args.bundle) if switch else None,
        lock_timeout=args.lock_timeout,
        progress=_progress(),
        report=_report,
    )
    print(outcome.message)
    if outcome.kargs is not None and (outcome.kargs.removed or outcome.kargs.added):
        print(f"Kernel arguments: {' '.join(outcome.kargs.kernel_arguments)}")
    if args.reboot and outcome.changed:
        from tether.edge.run import run

        run(["systemctl", "reboot"])
    return 0


def _status_text(deployments: list[dict[str, Any]]) -> str:
    if not deployments:
        return "No deployments."
    lines = []
    for d in deployments:
        marks = [m for m in ("default", "booted", "rollback", "pinned", "staged") if d[m]]
        lead = "*" if d["booted"] else ("●" if d["default"] else " ")
        lines.append(
            f"{lead} {d['stateroot']} {d['checksum']}.{d['serial']}"
            + (f" ({', '.join(marks)})" if marks else "")
        )
        if d["version"]:
            lines.append(f"      Version: {d['version']}")
        lines.append(f"    OS commit: {d['os_commit']}")
        bundle = d["bundle"]
        if bundle is None:
            lines.append("       Bundle: none (not deployed by tether)")
        else:
            lines.append(
                f"       Bundle: {bundle['name']} {bundle['version']} ({bundle['remote']}:{bundle['ref']})"
            )
            lines.append(f"               commit {bundle['commit']}")
            lines.append(f"     Bound to: {len(bundle['bound_to'])} OS commit(s)")
        lines.append(f"        Kargs: {' '.join(d['kernel_arguments']) or '(none)'}")
        if d["steps"]:
            steps = ", ".join(
                f"{s['kind']} {s['name']}: {s['status']}, owns {s['paths']} /etc path(s)" for s in d["steps"]
            )
            lines.append(f"        Steps: {steps}")
        health = d.get("health")
        if health:
            failed = f", failed: {', '.join(health['failed_units'])}" if health["failed_units"] else ""
            lines.append(
                f"       Health: {health['status']} ({health['good_boots']} good, "
                f"{health['failed_boots']} failed boot(s){failed})"
            )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from tether.admin import status

    deployments = status(args.sysroot)
    if args.stateroot is not None:
        deployments = [d for d in deployments if d["stateroot"] == args.stateroot]
    if args.json:
        print(json.dumps({"deployments": deployments}, indent=2))
    else:
        print(_status_text(deployments))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from tether.backup import backup

    result = backup(
        args.sysroot,
        args.stateroot,
        args.output,
        with_identity=args.with_identity,
        lock_timeout=args.lock_timeout,
        report=_report,
    )
    print(
        f"Wrote {result.path} (mode 0600): {result.etc_entries} /etc changes, {result.etc_removed} removed "
        f"defaults, and /var, of {result.deployment}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tether.backup import install_from_backup, restore

    if args.install:
        install_from_backup(
            args.sysroot,
            args.stateroot,
            args.file,
            lock_timeout=args.lock_timeout,
            progress=_progress(),
            report=_report,
        )
    name = restore(args.sysroot, args.stateroot, args.file, lock_timeout=args.lock_timeout, report=_report)
    print(f"Restored {args.file} onto {name}; run 'tether converge' (or reboot) to reconcile /var.")
    return 0


def cmd_converge(args: argparse.Namespace) -> int:
    from tether.converge import converge, summary

    print(summary(converge(*_options(args), report=_report)))
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from tether.drift import as_json, drift

    deployment, findings = drift(args.sysroot, args.stateroot)
    if args.json:
        print(json.dumps(as_json(deployment, findings), indent=2))
    elif not findings:
        print(f"No drift: {deployment.name} is as its bundle declares.")
    else:
        print(f"{len(findings)} difference(s) from the declaration in {deployment.name}:")
        for finding in findings:
            print(f"  {finding.kind:16} {finding.subject}: {finding.detail}")
    return 5 if findings else 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from tether.admin import rollback

    result = rollback(*_options(args), report=_report)
    print(
        f"Default at next boot: {result.default_version} ({result.default.name[:12]}…); rollback: "
        f"{result.previous_version} ({result.previous.name[:12]}…)"
    )
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from tether.admin import cleanup

    result = cleanup(*_options(args), report=_report)
    print(
        f"Removed unreferenced: {len(result.deployment_dirs)} deployment directories, "
        f"{len(result.compose_refs)} composed commits, {len(result.ledger_entries)} ledger entries."
    )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from tether import health
    from tether.edge.run import run

    if args.action == "check":
        results = health.run_checks()
        for r in results:
            print(f"{'ok' if r.ok else 'FAILED'}: {r.path}{'' if r.required else ' (wanted)'}: {r.detail}")
        return 1 if any(r.required and not r.ok for r in results) else 0
    if args.sysroot.resolve() != Path("/"):
        raise UsageError("health verdict judges the running boot; it is refused with an offline --sysroot")
    verdict = health.verdict(*_options(args))
    print(verdict.message, flush=True)
    if verdict.rolled_back:
        run(["systemctl", "reboot", "--no-block"])
    return 0 if verdict.healthy else 1
