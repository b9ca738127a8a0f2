"""The command line: argument parsing, output for humans and scripts, exit codes.

The only module that prints for humans or exits. Library code raises
`TetherError`s; `main` turns them into one `tether: error: ...` line and the
exit code SPEC assigns (2 bad input, 3 not bound, 4 verification, 6 lock,
77 no update with --check). Host options (`--sysroot`, `--stateroot`,
`--lock-timeout`) are accepted before or after the command name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.errors import NoUpdateError, TetherError, UsageError

PROG = "tether"

DESCRIPTION = """\
tether ships the configuration an ostree-based OS needs beside its tree (kernel
arguments, files in /etc, units, locale, timezone, hostname, sysctl, hooks) as a
bundle: an ostree ref of its own, bound to the OS commits it was tested with. An
upgrade pulls both, composes one commit, deploys it, runs the bundle's deploy
steps inside the new deployment, and only then makes it the default.
"""

EPILOG = """\
exit codes:
  0   done, or nothing to do
  1   failed
  2   bad usage or invalid input (nothing changed)
  3   the bundle is bound to no OS commit that can be found (nothing changed)
  4   signature, ref binding or integrity check failed, or a downgrade (nothing changed)
  5   drift: differences found
  6   another operation holds the sysroot lock past --lock-timeout
  77  upgrade --check or --preview: no update available

Offline sysroots (--sysroot DIR): there is no booted deployment, so the merge
deployment is the default one of the stateroot, and --reboot is refused.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _host_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # on subcommands the defaults are suppressed so a value given before the
    # command name is not overwritten by the subcommand's default
    default: Any = argparse.SUPPRESS if not top else None
    group = parser.add_argument_group("host options")
    group.add_argument(
        "--sysroot",
        type=Path,
        default=default if not top else Path("/"),
        metavar="PATH",
        help="the sysroot to operate on (default: /, the booted system)",
    )
    group.add_argument(
        "--stateroot",
        "--os",
        dest="stateroot",
        default=default,
        metavar="NAME",
        help="the stateroot (default: the booted one, else the only or default one)",
    )
    group.add_argument(
        "--lock-timeout",
        type=float,
        default=default if not top else 300.0,
        metavar="SECONDS",
        help="how long to wait for another operation's sysroot lock (default: 300)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run and more detail")
    _host_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str, host: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=textwrap.dedent(description),
            epilog=EPILOG,
            formatter_class=_Formatter,
        )
        if host:
            _host_options(sub, top=False)
        return sub

    bundle = command(
        "bundle", "validate, build and list bundles", "Work with bundle directories and refs.", False
    )
    bundle_commands = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND")
    check = bundle_commands.add_parser(
        "check",
        help="validate a bundle directory",
        description="Validate a bundle; errors name file:line:key.",
    )
    check.add_argument("directory", type=Path, metavar="DIR")
    build = bundle_commands.add_parser(
        "build",
        help="commit a bundle with its binding",
        description=textwrap.dedent(
            """\
            Commit the bundle directory DIR to REPO under REF, bound to the OS commits given
            by --bind (a checksum or a ref in REPO), --bind-ref and the manifest's os-commits.
            Binding to a commit REPO does not have is refused. The repo summary is updated."""
        ),
        formatter_class=_Formatter,
    )
    build.add_argument("directory", type=Path, metavar="DIR")
    build.add_argument("--repo", type=Path, required=True, metavar="REPO")
    build.add_argument("--ref", required=True, metavar="REF")
    build.add_argument(
        "--bind", action="append", default=[], metavar="COMMIT", help="an OS commit (repeatable)"
    )
    build.add_argument("--bind-ref", metavar="REF", help="bind to the commit REF points to in REPO")
    build.add_argument(
        "--gpg-sign", action="append", default=[], metavar="KEYID", help="sign with this GPG key"
    )
    build.add_argument("--gpg-homedir", type=Path, metavar="DIR", help="GPG home directory for --gpg-sign")
    listing = bundle_commands.add_parser(
        "list", help="bundle refs, versions and bindings", description="List the bundle refs of a repository."
    )
    listing.add_argument("--repo", type=Path, required=True, metavar="REPO")
    listing.add_argument("--os", metavar="COMMIT", help="only bundles bound to this OS commit")
    listing.add_argument("--json", action="store_true")

    comp = command(
        "compose",
        "make (or find) the composed commit of an OS and a bundle",
        """\
        Compose OS commit + bundle commit into one commit in REPO and print its checksum as
        the last word. The same inputs give the same checksum; a repeat is a cache hit.""",
        False,
    )
    comp.add_argument("--repo", type=Path, required=True, metavar="REPO")
    comp.add_argument("--os", required=True, metavar="REV", help="the OS commit or ref")
    comp.add_argument("--bundle", required=True, metavar="REV", help="the bundle commit or ref")

    inst = command(
        "install",
        "first installation into a sysroot",
        """\
        Install a product into a sysroot (initialised if empty): add the remote, pull the bundle
        and the OS commit it is bound to, compose, deploy, run the deploy steps, make it the
        default. No boot loader is installed: boot loader entries are written as ostree writes
        them. Give --gpg-import KEYFILE (signatures required) or --no-gpg-verify.""",
    )
    inst.add_argument("--remote", required=True, metavar="NAME=URL", help="the remote to pull from")
    inst.add_argument(
        "--bundle", required=True, metavar="NAME:REF", help="the product's bundle ref on remote NAME"
    )
    inst.add_argument(
        "--karg", action="append", default=[], metavar="ARG", help="a machine karg (repeatable)"
    )
    inst.add_argument("--gpg-import", action="append", default=[], type=Path, metavar="KEYFILE")
    inst.add_argument("--no-gpg-verify", action="store_true", help="do not require signatures")

    upg = command(
        "upgrade",
        "move to the newest OS + bundle pair",
        """\
        Pull the bundle ref, then the OS commit it selects (the OS ref's commit if the bundle
        is bound to it, else the newest bound commit), compose, deploy without touching the
        boot list, run the deploy steps in the new deployment, then make it the default.
        If the OS ref moved to a commit no bundle is bound to yet, stay and say so.""",
    )
    mode = upg.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="pull metadata only and say what would change")
    mode.add_argument(
        "--preview",
        action="store_true",
        help="also fetch and compose; show the karg changes, the /etc paths reset, "
        "and the new defaults that local edits shadow",
    )
    upg.add_argument(
        "--allow-downgrade", action="store_true", help="allow an OS commit older than the deployed"
    )
    upg.add_argument("--reboot", action="store_true", help="reboot when done (refused offline)")
    upg.add_argument(
        "--auto",
        action="store_true",
        help="do what /etc/tether/upgrade.conf's policy says (none, check, stage, apply); for the timer",
    )

    sw = command(
        "switch",
        "move to another product bundle",
        "Like upgrade, from another bundle ref (NAME:REF, NAME a configured remote).",
    )
    sw.add_argument("bundle", metavar="NAME:REF")
    sw.add_argument("--allow-downgrade", action="store_true")
    sw.add_argument("--reboot", action="store_true", help="reboot when done (refused offline)")

    st = command(
        "status", "show deployments", "Show deployments, their OS commit, bundle, binding and kargs."
    )
    st.add_argument("--json", action="store_true", help='print {"deployments": [...]}')

    command(
        "rollback", "make the other deployment the default", "Like 'ostree admin' / 'rpm-ostree rollback'."
    )
    bk = command(
        "backup",
        "save the machine's own state",
        """\
        Write FILE (mode 0600): the /etc local changes against the deployment's defaults (and the
        defaults removed), /var less /var/tmp, /var/cache and container storage, the origin, the
        remote and its keys, and tether's ledger; owners, modes, xattrs and ACLs kept (GNU tar).
        machine-id and SSH host keys only with --with-identity.""",
    )
    bk.add_argument("--output", "-o", type=Path, required=True, metavar="FILE")
    bk.add_argument("--with-identity", action="store_true", help="include machine-id and SSH host keys")
    rs = command(
        "restore",
        "reprovision from a backup",
        """\
        Restore FILE onto a sysroot where the backup's bundle is installed (as after tether
        install): its /etc changes and /var come back. With --install, an empty sysroot is first
        installed from the remote and bundle the backup records.""",
    )
    rs.add_argument("file", type=Path, metavar="FILE")
    rs.add_argument(
        "--install", action="store_true", help="install the recorded bundle first (empty sysroot)"
    )
    command(
        "converge",
        "boot-time: /var resources, boot steps, late /etc edits",
        """\
        Run at boot by tether-converge.service (offline: for the default deployment): make the
        deployment's declared /var directories, files, links, SSH authorized keys and swap file,
        remove those tether made that it no longer declares (only if unchanged), run its
        boot-stage steps once, and on its first boot report /etc edits made on the previous
        deployment after the upgrade. Offline, swapon/swapoff are not run.""",
    )
    dr = command(
        "drift",
        "what differs from the declaration",
        """\
        For the current deployment (booted, or offline the default one): enforced files edited,
        /etc paths changed since a bundle step wrote them, conflicts kept at the last upgrade,
        declared kargs missing, owned kargs no longer declared, units not in their declared
        state, and local /etc copies that shadow a newer OS default. Exit 5 when anything differs.""",
    )
    dr.add_argument("--json", action="store_true", help='print {"deployment": ..., "findings": [...]}')
    command(
        "cleanup",
        "remove what no deployment references",
        "Remove unreferenced deployment directories, composed commits and ledger entries.",
    )
    hl = command(
        "health",
        "boot health checks and verdict (run at boot by tether's units)",
        """\
        check: run the executables in /usr/lib/tether/health/ and /etc/tether/health/ required.d
        (a failure fails the boot) and wanted.d (reported only). verdict: on a running system,
        record whether this boot reached boot-complete.target; if the booted deployment failed
        before it ever booted well, make the previous deployment the default and reboot.""",
    )
    hl.add_argument("action", choices=["check", "verdict"])
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    handlers = {
        "bundle": cmd_bundle,
        "compose": cmd_compose,
        "install": cmd_install,
        "upgrade": cmd_upgrade,
        "switch": lambda a: cmd_upgrade(a, switch=True),
        "status": cmd_status,
        "rollback": cmd_rollback,
        "drift": cmd_drift,
        "cleanup": cmd_cleanup,
        "converge": cmd_converge,
        "backup": cmd_backup,
        "restore": cmd_restore,
        "health": cmd_health,
    }
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return handlers[args.command](args)
    except NoUpdateError as e:
        print(e)
        return e.exit_code
    except TetherError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # the host failed us (disk full, I/O error, permissions): one line, the details with -v
        logging.getLogger("tether").debug("%s", e, exc_info=True)
        where = f": {e.filename}" if e.filename else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
