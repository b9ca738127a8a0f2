"""Where kernel arguments are decided: SPEC's karg rule, pure.

new = merge deployment's kargs - kargs tether added for the previous bundle
      + kargs the new bundle declares that are not already there.

A karg the admin had before the bundle declared it is not tether's, so it is
not recorded as added and stays when the bundle drops it. Existing order is
kept, new ones are appended in declaration order, words are compared whole,
and `ostree=` is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KargPlan:
    kernel_arguments: tuple[str, ...]  # the new deployment's kargs, without ostree=
    added: tuple[str, ...]  # the kargs tether owns in the new deployment
    removed: tuple[str, ...]  # owned kargs the new bundle no longer declares


def plan_kargs(
    current: Sequence[str],
    previously_added: Sequence[str],
    declared: Sequence[str],
    absent: Sequence[str] = (),
) -> KargPlan:
    """`absent` (Ignition's shouldNotExist) go even when they are the admin's: an explicit "must not"."""
    current = [k for k in current if not k.startswith("ostree=")]
    declared_set = set(declared)
    owned_before = set(previously_added)

    # drop what tether added last time and the new bundle no longer declares, and what must not be
    removed = tuple(k for k in current if (k in owned_before and k not in declared_set) or k in absent)
    kept = [k for k in current if k not in removed]

    added: list[str] = [k for k in kept if k in owned_before and k in declared_set]
    result = list(kept)
    for karg in declared:
        if karg.startswith("ostree=") or karg in absent:
            continue
        if karg not in result:
            result.append(karg)
            added.append(karg)
    # an owned karg stays owned; one the admin had before stays the admin's
    added = list(dict.fromkeys(added))
    return KargPlan(kernel_arguments=tuple(result), added=tuple(added), removed=removed)
