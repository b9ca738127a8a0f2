"""The command line's grammar: commands, options and their man-page-quality help."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

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


def build_parser() -> argparse.ArgumentParser:
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
        "--allow-failed",
        action="store_true",
        help="deploy an OS + bundle pair even though it failed its health check on this machine",
    )
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
