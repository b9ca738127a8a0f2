"""/etc/fstab lines owned by a bundle, and checking the file before a deployment is promoted.

The bundle's `[[mount]]`s are one block between marker comments, rewritten at
every upgrade in the new deployment's /etc/fstab (added, changed, or removed
with the block when the bundle drops them); the admin's own lines are never
touched. The resulting file is checked with `findmnt --verify` before the
deployment can become the default, so a broken fstab never becomes the
default: a parse error, or an error that does not depend on this machine's
devices and directories, fails the upgrade.
"""

from __future__ import annotations

import re
from pathlib import Path

from tether.bundle.model import Bundle
from tether.edge.run import run
from tether.errors import StepFailedError

BEGIN = "# BEGIN tether bundle {name}: the lines up to END are managed by tether"
END = "# END tether bundle"
_BEGIN = re.compile(r"^# BEGIN tether bundle ")

# findmnt checks sources and targets against the machine it runs on, which is not
# the machine that will boot this deployment (and offline, not a machine at all)
_MACHINE_DEPENDENT = ("unreachable on boot required source", "unreachable on boot required target")


def _fstab_line(what: str, where: str, fstype: str, options: tuple[str, ...]) -> str:
    passno = 2 if fstype not in ("swap", "none") else 0
    return f"{what} {where} {fstype} {','.join(options) or 'defaults'} 0 {passno}"


def without_block(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if _BEGIN.match(line):
            inside = True
        elif inside and line.startswith(END):
            inside = False
        elif not inside:
            lines.append(line)
    return lines


def render(text: str, bundle: Bundle) -> str:
    lines = without_block(text)
    if bundle.mounts:
        lines.append(BEGIN.format(name=bundle.info.name))
        lines += [_fstab_line(m.what, str(m.where), m.type, m.options) for m in bundle.mounts]
        lines.append(END)
    return "\n".join(lines) + "\n" if lines else ""


def update(etc: Path, bundle: Bundle) -> bool:
    fstab = etc / "fstab"
    current = fstab.read_text() if fstab.is_file() else ""
    wanted = render(current, bundle)
    if wanted == current or (not bundle.mounts and not fstab.exists()):
        return False
    fstab.write_text(wanted)
    return True


def verify(fstab: Path) -> None:
    if not fstab.is_file():
        return
    done = run(["findmnt", "--verify", "--tab-file", str(fstab)], check=False, capture=True)
    output = done.stdout + done.stderr
    parse = re.search(r"(\d+) parse error", output)
    errors = [
        line.strip()
        for line in output.splitlines()
        if line.strip().startswith("[E]") and not any(m in line for m in _MACHINE_DEPENDENT)
    ]
    if (parse and int(parse.group(1)) > 0) or errors:
        details = "\n".join(line for line in output.splitlines() if "parse error" in line or "[E]" in line)
        raise StepFailedError(f"the new /etc/fstab does not verify; nothing was deployed:\n{details}")
