"""The command line: argument parsing, output for humans and scripts, exit codes.

The only module that prints for humans or exits. Library code raises
`TetherError`s; `main` turns them into one `tether: error: ...` line and the
exit code SPEC assigns (2 bad input, 3 not bound, 4 verification, 6 lock,
77 no update with --check). Host options (`--sysroot`, `--stateroot`,
`--lock-timeout`) are accepted before or after the command name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from tether.cli.commands import (
    cmd_backup,
    cmd_bundle,
    cmd_cleanup,
    cmd_compose,
    cmd_converge,
    cmd_drift,
    cmd_health,
    cmd_install,
    cmd_restore,
    cmd_rollback,
    cmd_status,
    cmd_upgrade,
)
from tether.cli.parser import PROG, build_parser
from tether.errors import NoUpdateError, TetherError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
