"""The results of a benchmark run and their markdown rendering (bench/results.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.fixtures import BUNDLE_FILES, CHANGED_FILES, DEBIAN, OsKind
from bench.measure import ProfileLine, Sample, paired_ratio

COMPOSE_TARGET_SECONDS = 0.020
COMPOSE_SCALING_TARGET = 1.5  # compose on the large OS / compose on the small OS
UPGRADE_TARGET = 1.25  # tether upgrade / (pull-local + admin deploy)
RSS_TARGET_MB = 150.0  # tether upgrade on the Debian tree; MB = 10^6 bytes


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
class Report:
    machine: dict[str, str]
    runs: dict[str, int]
    compose: list[ComposeResult]
    compose_profile: list[ProfileLine]
    upgrade: list[UpgradeResult]
    python_start: Sample
    tether_imports: Sample
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
    return _table(["Measure", "tether", "plain ostree", "ratio", "target", "result"], rows)


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


def _profile(lines: list[ProfileLine]) -> list[str]:
    rows = [
        [f"`{line.function}`", str(line.calls), _time(line.own), _time(line.cumulative)] for line in lines
    ]
    return _table(["function", "calls", "own time", "cumulative"], rows)


def render(report: Report) -> str:
    runs = report.runs
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
        "- OS trees: `tests.ostree_trees` (`synthetic_tree(files=1000)`, `large_synthetic_tree()`, "
        "`debian_tree()`), committed with the ostree CLI.",
        "- All work files are under `bench/work/` and removed at the end (`bench/run.py --keep` keeps them).",
        "",
    ]
    return "\n".join(out)
