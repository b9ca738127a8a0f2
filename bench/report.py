"""The results of a benchmark run and their markdown rendering (bench/results.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.changes import (
    CHANGE_DIRECTORIES,
    CHANGE_FILES,
    CHANGES,
    CHANGES_BUDGET_SECONDS,
    CHANGES_ROOT,
    DRIFT_KARGS,
)
from bench.fixtures import BUNDLE_FILES, CHANGED_FILES, DEBIAN, OsKind
from bench.measure import ProfileLine, Sample, paired_ratio

COMPOSE_TARGET_SECONDS = 0.020
COMPOSE_SCALING_TARGET = 1.5  # compose on the large OS / compose on the small OS
UPGRADE_TARGET = 1.25  # tether upgrade / (pull-local + admin deploy)
RSS_TARGET_MB = 150.0  # tether upgrade on the Debian tree; MB = 10^6 bytes
ANSIBLE_TARGET = 100.0  # Ansible playbook / tether compose, for the same changes
DRIFT_TARGET_SECONDS = 0.150  # drift() in-process on the installed Debian


@dataclass(frozen=True)
class ComposeResult:
    kind: OsKind
    entries: int
    tether: Sample
    tree_ref: Sample  # ostree commit --tree=ref=OS --tree=dir=OVERLAY
    checkout_commit: Sample  # ostree checkout + cp + ostree commit --tree=dir


@dataclass(frozen=True)
class UpgradeResult:
    kind: OsKind
    entries: int
    tether: Sample
    plain: Sample  # pull-local + admin deploy
    pull_local: Sample
    deploy: Sample
    tether_rss_kib: int  # the highest of all runs
    pull_local_rss_kib: int
    deploy_rss_kib: int
    same_commit: bool  # both sysroots ended up on the composed commit
    profile: list[ProfileLine]


@dataclass(frozen=True)
class ChangesResult:
    entries: int  # of the Debian tree with Ansible
    native_first: Sample  # compose() of a fresh composition
    native_again: Sample  # compose() again: a cache hit
    ansible_first: Sample  # the playbook on a fresh copy of the tree
    ansible_again: Sample  # the playbook again on that copy
    changed_first: tuple[int, ...]  # `changed=` of Ansible's PLAY RECAP, run by run
    changed_again: tuple[int, ...]
    same_result: bool  # the playbook made what the composition holds (types, modes, owners, content)


@dataclass(frozen=True)
class DriftResult:
    etc_entries: int  # in the deployment's /etc
    deployments: int
    findings: tuple[str, ...]  # "kind subject" of what drift() found; nothing has drifted on the machine
    in_process: Sample  # tether.drift.drift()
    cli: Sample  # the `tether drift` command
    python_start: Sample  # python -c pass, in alternation with the CLI
    imports: Sample  # python -c "import tether.cli, tether.drift", in alternation with the CLI
    profile: list[ProfileLine]


@dataclass(frozen=True)
class Report:
    machine: dict[str, str]
    runs: dict[str, int]
    compose: list[ComposeResult]
    compose_profile: list[ProfileLine]
    upgrade: list[UpgradeResult]
    python_start: Sample
    tether_imports: Sample
    changes: ChangesResult
    drift: DriftResult
    duration: float
    quick: bool


def _time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _sample(sample: Sample) -> str:
    if sample.runs == 1:
        return f"{_time(sample.median)} (n=1)"
    return f"{_time(sample.median)} ({_time(sample.low)}-{_time(sample.high)}, n={sample.runs})"


def _mb(kib: int) -> float:
    return kib * 1024 / 1e6


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _os_name(kind: OsKind, entries: int) -> str:
    return f"{kind.title} ({entries:,} entries)"


def _targets(report: Report) -> list[str]:
    rows = []
    for c in report.compose:
        rows.append(
            [
                f"compose, {BUNDLE_FILES}-file bundle, {_os_name(c.kind, c.entries)}",
                f"{_time(c.tether.median)} (best {_time(c.tether.low)})",
                f"`ostree commit --tree=ref --tree=dir` {_time(c.tree_ref.median)}",
                f"{paired_ratio(c.tether, c.tree_ref):.2f}x",
                f"≤ {_time(COMPOSE_TARGET_SECONDS)}",
                _verdict(c.tether.median <= COMPOSE_TARGET_SECONDS),
            ]
        )
    small, large = report.compose[0], report.compose[1]
    scaling = paired_ratio(large.tether, small.tether)
    rows.append(
        [
            f"compose on {large.entries:,} entries ÷ compose on {small.entries:,} entries",
            _time(large.tether.median),
            f"{_time(small.tether.median)} (small OS)",
            f"{scaling:.2f}x",
            f"≤ {COMPOSE_SCALING_TARGET:g}x",
            _verdict(scaling <= COMPOSE_SCALING_TARGET),
        ]
    )
    for u in report.upgrade:
        ratio = paired_ratio(u.tether, u.plain)
        rows.append(
            [
                f"`tether upgrade`, {_os_name(u.kind, u.entries)}",
                _time(u.tether.median),
                f"`ostree pull-local` + `ostree admin deploy` {_time(u.plain.median)}",
                f"{ratio:.2f}x",
                f"≤ {UPGRADE_TARGET:g}x",
                _verdict(ratio <= UPGRADE_TARGET),
            ]
        )
    for u in report.upgrade:
        if u.kind is not DEBIAN:
            continue
        plain = max(u.pull_local_rss_kib, u.deploy_rss_kib)
        rows.append(
            [
                f"peak RSS of `tether upgrade`, {_os_name(u.kind, u.entries)}",
                f"{_mb(u.tether_rss_kib):.1f} MB",
                f"largest plain ostree command {_mb(plain):.1f} MB",
                f"{u.tether_rss_kib / plain:.2f}x",
                f"≤ {RSS_TARGET_MB:g} MB",
                _verdict(_mb(u.tether_rss_kib) <= RSS_TARGET_MB),
            ]
        )
    steps = report.changes
    for what, ours, theirs in (
        ("first run", steps.native_first, steps.ansible_first),
        ("no-change run", steps.native_again, steps.ansible_again),
    ):
        ratio = theirs.median / ours.median
        rows.append(
            [
                f"{CHANGES} changes under /etc, {what}: native resources (`compose()`) vs Ansible, "
                f"Debian with Ansible ({steps.entries:,} entries)",
                _time(ours.median),
                f"`ansible-playbook -c local` in bubblewrap {_time(theirs.median)}",
                f"{ratio:,.0f}x faster",
                f"≥ {ANSIBLE_TARGET:g}x faster",
                _verdict(ratio >= ANSIBLE_TARGET),
            ]
        )
    d = report.drift
    rows.append(
        [
            f"`tether drift` in-process (`drift()`), Debian bookworm minbase "
            f"(/etc of {d.etc_entries:,} entries)",
            _time(d.in_process.median),
            f"the whole `tether drift` CLI {_time(d.cli.median)} (not held to the target)",
            "—",
            f"≤ {_time(DRIFT_TARGET_SECONDS)} (in-process)",
            _verdict(d.in_process.median <= DRIFT_TARGET_SECONDS),
        ]
    )
    return _table(["Measure", "tether", "compared with", "ratio", "target", "result"], rows)


def _compose_details(report: Report) -> list[str]:
    rows = [
        [
            _os_name(c.kind, c.entries),
            _sample(c.tether),
            _sample(c.tree_ref),
            _sample(c.checkout_commit),
            f"{paired_ratio(c.tether, c.tree_ref):.3f}x",
            f"{c.tether.median / c.checkout_commit.median:.3f}x",
        ]
        for c in report.compose
    ]
    header = [
        "OS",
        "tether `compose()`",
        "`ostree commit --tree=ref=OS --tree=dir=OVERLAY`",
        "`ostree checkout` + `cp` + `ostree commit --tree=dir`",
        "tether ÷ tree=ref",
        "tether ÷ checkout+commit",
    ]
    return _table(header, rows)


def _upgrade_details(report: Report) -> list[str]:
    rows = [
        [
            _os_name(u.kind, u.entries),
            _sample(u.tether),
            _sample(u.plain),
            _sample(u.pull_local),
            _sample(u.deploy),
            f"{paired_ratio(u.tether, u.plain):.2f}x",
            "yes" if u.same_commit else "**no**",
        ]
        for u in report.upgrade
    ]
    header = [
        "OS",
        "`tether upgrade`",
        "pull-local + admin deploy",
        "of which `ostree pull-local`",
        "of which `ostree admin deploy`",
        "ratio",
        "same commit deployed",
    ]
    lines = _table(header, rows)
    start = report.python_start.median
    imports = report.tether_imports.median
    lines += [
        "",
        f"Fixed cost in every `tether` command: the interpreter starts in {_time(start)}; with the "
        f"modules `tether upgrade` imports (`import tether.cli, tether.upgrade`) it takes {_time(imports)}, "
        f"i.e. {_time(imports - start)} of imports (medians of {report.tether_imports.runs} runs).",
    ]
    return lines


def _memory_details(report: Report) -> list[str]:
    rows = [
        [
            _os_name(u.kind, u.entries),
            f"{_mb(u.tether_rss_kib):.1f} MB",
            f"{_mb(u.pull_local_rss_kib):.1f} MB",
            f"{_mb(u.deploy_rss_kib):.1f} MB",
            f"≤ {RSS_TARGET_MB:g} MB" if u.kind is DEBIAN else "—",
        ]
        for u in report.upgrade
    ]
    return _table(["OS", "`tether upgrade`", "`ostree pull-local`", "`ostree admin deploy`", "target"], rows)


def _changes_details(report: Report) -> list[str]:
    c = report.changes
    rows = [
        [
            what,
            _sample(ours),
            _sample(theirs),
            f"{theirs.median / ours.median:,.0f}x",
            ", ".join(str(n) for n in changed),
        ]
        for what, ours, theirs, changed in (
            ("first run", c.native_first, c.ansible_first, c.changed_first),
            ("no-change run", c.native_again, c.ansible_again, c.changed_again),
        )
    ]
    header = ["run", "tether `compose()`", "`ansible-playbook -c local`", "Ansible ÷ tether"]
    header.append("Ansible `changed=`")
    lines = _table(header, rows)
    lines += [
        "",
        f"Same result: {'yes' if c.same_result else '**no**'} (every entry under {CHANGES_ROOT} that the "
        "playbook made has the type, mode, owner and content of the composed commit's).",
    ]
    return lines


def _drift_details(report: Report) -> list[str]:
    d = report.drift
    start, imports = d.python_start.median, d.imports.median
    rows = [
        [
            f"Debian bookworm minbase, {d.deployments} deployments, /etc of {d.etc_entries:,} entries",
            _sample(d.in_process),
            _sample(d.cli),
            _time(start),
            _time(imports - start),
            _time(d.cli.median - imports),
            ", ".join(f"**{f}** (false)" for f in d.findings) or "none",
        ]
    ]
    header = [
        "machine",
        "`drift()` in-process",
        "`tether drift` CLI",
        "of which Python start-up",
        "of which imports",
        "of which the rest",
        "findings",
    ]
    lines = _table(header, rows)
    lines += [
        "",
        'Python start-up is `python -c pass`; imports are `python -c "import tether.cli, tether.drift"` '
        "less that; the rest is the CLI less both: about one `drift()` and the output (medians).",
    ]
    return lines


def _profile(lines: list[ProfileLine]) -> list[str]:
    rows = [
        [f"`{line.function}`", str(line.calls), _time(line.own), _time(line.cumulative)] for line in lines
    ]
    return _table(["function", "calls", "own time", "cumulative"], rows)


def render(report: Report) -> str:
    runs = report.runs
    steps = report.changes
    out = [
        "# tether benchmark",
        "",
        f"Written by `make bench` (`bench/run.py`) on {time.strftime('%Y-%m-%d %H:%M %Z')} in "
        f"{report.duration / 60:.1f} min. Figures are medians, with (min-max, number of runs).",
    ]
    if report.quick:
        out += ["", "**`--quick` run: one run of each measurement, not for comparison.**"]
    out += ["", "## Machine", ""]
    out += _table(list(report.machine), [list(report.machine.values())])
    out += ["", "## Targets", ""]
    out += _targets(report)
    out += [
        "",
        "## 1. Compose",
        "",
        f"A bundle of {BUNDLE_FILES} `[[file]]` entries under /etc composed onto OS version 1 in a bare "
        "repository (as on a machine). tether: `tether.compose.compose(Repo(path), os_commit, "
        "bundle_commit)` in-process, timed with `time.perf_counter`. Before each run the "
        "`tether/compose/*` refs are deleted and the repository is pruned (`ostree prune --refs-only`), "
        "so every run is a first composition that writes its objects. Plain ostree on the same commit "
        "and repository: `ostree commit --tree=ref=OS --tree=dir=OVERLAY` (OVERLAY holds the same files "
        f"under usr/etc), {runs['compose']} runs alternating with tether's, and what a naive tool does, "
        f"{runs['baseline']} runs: `ostree checkout` (hardlinks), `cp` the files in, `ostree commit "
        "--tree=dir=`. Every series starts with an untimed warm-up. The ostree figures include starting "
        "the `ostree` process.",
        "",
    ]
    out += _compose_details(report)
    out += [
        "",
        "## 2. Upgrade",
        "",
        "A sysroot installed with `tether install` from a `file://` archive remote (OS 1 + bundle 1) "
        f"is upgraded to OS 2 (os-release and {CHANGED_FILES} files changed) + bundle 2 (its "
        f"{BUNDLE_FILES} files changed). tether: the `tether upgrade --sysroot S` CLI (pull, compose, "
        "deploy, write the deployment list). Plain ostree, on an identical copy of the sysroot: "
        "`ostree pull-local VENDOR_REPO COMMIT` + `ostree admin deploy --sysroot S --os exampleos "
        "COMMIT` of the very commit tether deploys (made beforehand with `tether compose --repo` on the "
        f"vendor repo). {runs['upgrade']} runs, each on fresh `cp -a` copies of one installed template, "
        "alternating which side goes first.",
        "",
    ]
    out += _upgrade_details(report)
    out += [
        "",
        "## 3. Peak memory",
        "",
        "Maximum resident set size from `/usr/bin/time -v`, the highest over the upgrade runs above "
        "(MB = 10^6 bytes).",
        "",
    ]
    out += _memory_details(report)
    out += [
        "",
        "## 4. Native resources vs Ansible",
        "",
        f"The same {CHANGES} changes under {CHANGES_ROOT} ({CHANGE_DIRECTORIES} directories with their "
        f"modes, {CHANGE_FILES} files with their content and modes, four different modes), on the Debian "
        'tree with Ansible (`debian_tree(extra_packages=("ansible-core", "python3-cffi-backend"))`). '
        f"**Native**: a bundle of {CHANGE_DIRECTORIES} `[[directory]]` and {CHANGE_FILES} `[[file]]` "
        "resources, applied by composing: `tether.compose.compose()` in-process on the OS commit in a "
        "bare repository; the first run is a fresh composition (the `tether/compose/*` refs deleted and "
        "the repository pruned before it, as in part 1), the no-change run composes again (a cache hit). "
        "**Ansible**: a bundle whose playbook makes the same changes with one `ansible.builtin.file` or "
        "`ansible.builtin.copy` task per change (`gather_facts: false`), run as tether runs a bundle's "
        "playbook (`tether.steps.run_playbook_in`: the OS tree's own `ansible-playbook -c local -i "
        "localhost, --limit localhost` in bubblewrap, with tether's Ansible environment) over a writable "
        "`cp -a` copy of the tree (`Sandbox.compose`: /usr/etc is its /etc); the first run on a fresh "
        f"copy, the no-change run right after on the same copy. Rounds: {steps.ansible_first.runs} (up to "
        f"{runs['ansible']}, fewer when the part would take more than {CHANGES_BUDGET_SECONDS / 60:g} min), "
        f"each of {runs['native']} native first runs, a fresh copy and one Ansible first run, "
        f"{runs['native']} native no-change runs, one Ansible no-change run; one untimed native warm-up "
        "first. Ratios are of the medians.",
        "",
    ]
    out += _changes_details(report)
    kargs = ", ".join(f"`{karg}`" for karg in DRIFT_KARGS)
    out += [
        "",
        "## 5. `tether drift`",
        "",
        "A Debian sysroot installed with `tether install` with a bundle of 4 `[[file]]` entries in /etc "
        f'(one `policy = "enforce"`), a unit with its source, enabled, kernel arguments {kargs} and a '
        "deploy hook that writes an /etc file and edits an OS default (both in the ledger), then upgraded "
        "once (OS 2 + bundle 2), so that it has a rollback deployment and drift compares /usr/etc with "
        "it. Nothing has drifted, so any finding is a false one. In-process: "
        f"`tether.drift.drift(sysroot, stateroot)`, {runs['drift']} runs after a warm-up. The CLI: "
        f"`tether drift --sysroot S`, {runs['drift_cli']} runs after a warm-up, in alternation with "
        '`python -c pass` and `python -c "import tether.cli, tether.drift"` to split its time. The target '
        "is held to the in-process figure; the CLI adds Python's start-up and imports.",
        "",
    ]
    out += _drift_details(report)
    out += [
        "",
        "## Where tether's time goes",
        "",
        "cProfile, tether's own functions by cumulative time, per run. cProfile does not list the "
        "libostree calls made through PyGObject: their time is the *own time* of the tether function "
        "that makes them (e.g. `transaction` is libostree's prepare/commit_transaction, and the latter "
        "ends with syncfs(); `<module>` lines are imports).",
        "",
        f"### `compose()` on the small synthetic OS ({runs['profiled']} runs)",
        "",
    ]
    out += _profile(report.compose_profile)
    for u in report.upgrade:
        out += ["", f"### `tether upgrade` on the {_os_name(u.kind, u.entries)} (1 run)", ""]
        out += _profile(u.profile)
    out += ["", f"### `drift()` on the installed Debian ({runs['profiled']} runs)", ""]
    out += _profile(report.drift.profile)
    out += [
        "",
        "## Method",
        "",
        "- Before every timed run, `sync` writes back dirty pages, so no run pays for the setup's writes "
        "(libostree transactions end with syncfs(), which would). Other work on the machine still "
        "weighs on syncfs(): see the load averages above.",
        "- tether and plain ostree run in alternation (compose: round after round over the three OSes; "
        "upgrade: pair after pair, alternating which goes first). The ratios of such paired series "
        "(tether ÷ `--tree=ref`, 19k ÷ 1k entries, upgrade) are medians of the run-by-run ratios; the "
        "others are ratios of medians. Targets on times are held to medians.",
        "- Native and Ansible runs alternate within each round of part 4; an Ansible run takes tens of "
        "seconds, hence few of them.",
        "- OS trees: `tests.ostree_trees` (`synthetic_tree(files=1000)`, `large_synthetic_tree()`, "
        "`debian_tree()`, and `debian_tree(extra_packages=...)` with Ansible for part 4), committed with the "
        "ostree CLI.",
        "- All work files are under `bench/work/` and removed at the end (`bench/run.py --keep` keeps them).",
        "",
    ]
    return "\n".join(out)
