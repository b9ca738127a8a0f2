"""The /etc drift rule as a table: (pre, post, pre was default, live now) → action."""

from __future__ import annotations

import pytest

from tether.etcstate import Image
from tether.ledger import PathRecord
from tether.plan.etc import EtcAction, decide, merge_records

DEFAULT = Image("file", 0o644, 0, 0, sha256="d" * 64)
ADMIN = Image("file", 0o644, 0, 0, sha256="a" * 64)
STEP = Image("file", 0o644, 0, 0, sha256="5" * 64)
LATER = Image("file", 0o600, 0, 0, sha256="l" * 64)

CASES = [
    # a line added by lineinfile to an OS default, untouched since: back to the (new) default
    (DEFAULT, STEP, True, STEP, EtcAction.RESET_TO_DEFAULT),
    # a file the step created, untouched: gone (or the new default if the OS now ships one)
    (None, STEP, True, STEP, EtcAction.RESET_TO_DEFAULT),
    # the step changed the admin's own edit: the admin's edit comes back
    (ADMIN, STEP, False, STEP, EtcAction.RESTORE_PRE),
    # the admin changed it after the step: kept, saved, reported
    (DEFAULT, STEP, True, LATER, EtcAction.CONFLICT),
    (None, STEP, True, None, EtcAction.NOTHING),
    # the step removed a file and the admin recreated it
    (DEFAULT, None, True, LATER, EtcAction.CONFLICT),
    (DEFAULT, None, True, None, EtcAction.RESET_TO_DEFAULT),
    (ADMIN, None, False, None, EtcAction.RESTORE_PRE),
    # the admin put back exactly what was there before the step
    (ADMIN, STEP, False, ADMIN, EtcAction.NOTHING),
]


@pytest.mark.parametrize(("pre", "post", "pre_is_default", "live", "action"), CASES)
def test_decide(pre: Image | None, post: Image | None, pre_is_default: bool, live: Image | None,
                action: EtcAction) -> None:
    assert decide(PathRecord("x.conf", pre, post, pre_is_default, "hook"), live) is action


def test_merge_keeps_first_pre_and_last_post() -> None:
    records = [
        PathRecord("a", DEFAULT, STEP, True, "one"),
        PathRecord("a", STEP, LATER, False, "two"),
        PathRecord("b", None, STEP, True, "one"),
        PathRecord("b", STEP, None, False, "two"),  # created then removed: no net change
    ]
    assert merge_records(records) == [PathRecord("a", DEFAULT, LATER, True, "one, two")]
