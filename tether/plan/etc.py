"""Where the drift rule for /etc is decided: what becomes of each path a step changed.

Pure. Given a ledger record (the path's pre- and post-image) and what the path
holds now on the deployment being upgraded from, say what the new deployment
gets: the new OS default, the admin's own earlier version, or (when the admin
changed the path after the step) the admin's current version, kept and
reported as a conflict.
"""

from __future__ import annotations

import enum

from tether.etcstate import Image
from tether.ledger import PathRecord


class EtcAction(enum.StrEnum):
    RESET_TO_DEFAULT = "reset-to-default"  # the step's change goes; the new OS default comes
    RESTORE_PRE = "restore-pre"  # the step's change goes; the admin's earlier version comes back
    CONFLICT = "conflict"  # changed since the step: the admin's version is kept, saved, reported
    NOTHING = "nothing"  # the step's change is gone already


def decide(record: PathRecord, live: Image | None) -> EtcAction:
    if live == record.post:
        return EtcAction.RESET_TO_DEFAULT if record.pre_is_default else EtcAction.RESTORE_PRE
    if live == record.pre:
        return EtcAction.NOTHING
    return EtcAction.CONFLICT


def merge_records(records: list[PathRecord]) -> list[PathRecord]:
    """One record per path across steps: the first step's pre-image, the last step's post-image."""
    by_path: dict[str, PathRecord] = {}
    for record in records:
        first = by_path.get(record.path)
        if first is None:
            by_path[record.path] = record
        else:
            steps = first.step if record.step in first.step.split(", ") else f"{first.step}, {record.step}"
            by_path[record.path] = PathRecord(
                record.path, first.pre, record.post, first.pre_is_default, steps
            )
    return [r for r in by_path.values() if r.pre != r.post]
