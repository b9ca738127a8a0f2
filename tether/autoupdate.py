"""The automatic upgrade policy: `/etc/tether/upgrade.conf`, read by `tether upgrade --auto`.

Like rpm-ostree's AutomaticUpdatePolicy: `none` (the default: do nothing),
`check` (say whether an update is available), `stage` (deploy it; it becomes
the default at the next boot) or `apply` (deploy it and reboot). The file is
`key=value` lines; `#` starts a comment.
"""

from __future__ import annotations

import enum
from pathlib import Path

from tether.errors import UsageError

CONFIG = Path("etc/tether/upgrade.conf")  # relative to a deployment root


class Policy(enum.StrEnum):
    NONE = "none"
    CHECK = "check"
    STAGE = "stage"
    APPLY = "apply"


def read_policy(deployment_root: Path) -> Policy:
    path = deployment_root / CONFIG
    if not path.is_file():
        return Policy.NONE
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or key != "policy":
            raise UsageError(f"/{CONFIG}:{number}: expected 'policy = none|check|stage|apply', got {raw!r}")
        try:
            return Policy(value)
        except ValueError:
            raise UsageError(
                f"/{CONFIG}:{number}:policy: '{value}' is not none, check, stage or apply"
            ) from None
    return Policy.NONE
