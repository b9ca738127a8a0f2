"""The measurements of `make bench`: compose, upgrade, peak memory, native vs Ansible, drift.

1. compose: `tether.compose.compose()` in-process on a bare repository, against plain ostree
   doing the same overlay (`ostree commit --tree=ref=OS --tree=dir=OVERLAY`) and against what a
   naive tool does (check the OS out, copy the files in, commit the directory);
2. upgrade: the `tether upgrade` CLI on an installed sysroot, against `ostree pull-local` +
   `ostree admin deploy` of the very commit tether deploys, on an identical copy of the sysroot;
3. peak memory: the maximum resident set of those commands, from `/usr/bin/time -v`;
4. native resources vs Ansible: the same 50 changes under /etc applied by composing a bundle of
   `[[file]]`/`[[directory]]` resources, and by the OS tree's own `ansible-playbook -c local` in
   bubblewrap (as tether runs a bundle's playbook), first and no-change runs of each;
5. drift: `tether.drift.drift()` in-process and the `tether drift` CLI on an installed Debian.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from bench import changes, fixtures
from bench.changes import CHANGES_BUDGET_SECONDS, ChangesRepo
from bench.fixtures import DEBIAN, LARGE, SMALL, ComposeRepo, OsKind, Trees, UpgradeSetup
from bench.measure import (
    Measured,
    ProfileLine,
    Sample,
    load_average,
    machine_facts,
    repeat,
    run_measured,
    run_quiet,
    settle,
    timed,
    top_functions,
)
from bench.report import ChangesResult, ComposeResult, DriftResult, Report, UpgradeResult, render
from tests.ostree_trees import count_entries
from tether.bundle.manifest import load_bundle
from tether.bundle.model import Bundle
from tether.compose import COMPOSE_REF_PREFIX, compose
from tether.drift import drift
from tether.edge.ostree import Repo, Sysroot
from tether.edge.sandbox import Sandbox
from tether.steps import run_playbook_in

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK = REPO_ROOT / "bench" / "work"
RESULTS = REPO_ROOT / "bench" / "results.md"
TETHER_PACKAGE = REPO_ROOT / "tether"


@dataclass(frozen=True)
class Runs:
    compose: int  # tether compose, per OS
    baseline: int  # checkout + commit, per OS
    upgrade: int  # upgrade pairs, per OS
    profiled: int  # compose runs under cProfile
    ansible: int  # rounds of native vs Ansible, at most: each a first and a no-change playbook run
    native: int  # native first and no-change runs, per round
    drift: int  # in-process drift runs
    drift_cli: int  # `tether drift` CLI runs


FULL = Runs(compose=21, baseline=3, upgrade=7, profiled=10, ansible=3, native=5, drift=21, drift_cli=5)
QUICK = Runs(compose=5, baseline=1, upgrade=1, profiled=3, ansible=1, native=3, drift=5, drift_cli=1)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. compose -------------------------------------------------------------------------------


def _forget_compositions(repo: ComposeRepo | ChangesRepo) -> None:
    """Make the next compose start from scratch: no cached ref, none of its objects left."""
    handle = Repo(repo.path)
    for ref in handle.refs(COMPOSE_REF_PREFIX):
        handle.set_ref(ref, None)
    _prune(repo)


def _prune(repo: ComposeRepo | ChangesRepo) -> None:
    run_quiet(["ostree", f"--repo={repo.path}", "prune", "--refs-only"])


def _overlay_commit(repo: ComposeRepo) -> None:
    run_quiet(
        [
            "ostree",
            f"--repo={repo.path}",
            "commit",
            "--orphan",
            f"--tree=ref={repo.os_commit}",
            f"--tree=dir={repo.overlay}",
            "--subject=overlay",
        ]
    )


def _fresh_checkout(repo: ComposeRepo, scratch: Path) -> None:
    fixtures.remove_tree(scratch)
    _prune(repo)


def _checkout_commit(repo: ComposeRepo, scratch: Path) -> None:
    run_quiet(["ostree", f"--repo={repo.path}", "checkout", repo.os_commit, str(scratch)])
    # replace rather than write through: a checkout of a bare repo is hardlinks to its objects
    run_quiet(["cp", "-a", "--remove-destination", f"{repo.overlay}/.", f"{scratch}/"])
    run_quiet(
        ["ostree", f"--repo={repo.path}", "commit", "--orphan", f"--tree=dir={scratch}", "--subject=naive"]
    )


def _tether_compose(repo: ComposeRepo) -> None:
    compose(Repo(repo.path), repo.os_commit, repo.bundle_commit)


def bench_compose(trees: Trees, runs: Runs) -> tuple[list[ComposeResult], ComposeRepo]:
    kinds = (SMALL, LARGE, DEBIAN)
    repos = {}
    for kind in kinds:
        log(f"compose: preparing the {kind.title}")
        repos[kind] = fixtures.compose_repo(trees, kind, WORK / f"compose-{kind.key}")

    # tether and `ostree commit --tree=ref` in alternation, round after round over the three OSes,
    # so that whatever else the machine does weighs on all of them alike; round 0 warms up
    log(f"compose: tether and ostree commit --tree=ref --tree=dir, {runs.compose} rounds")
    tether: dict[OsKind, list[float]] = {kind: [] for kind in kinds}
    tree_ref: dict[OsKind, list[float]] = {kind: [] for kind in kinds}
    for index in range(runs.compose + 1):
        for kind in kinds:
            repo = repos[kind]
            ours = timed(partial(_forget_compositions, repo), partial(_tether_compose, repo))
            theirs = timed(partial(_prune, repo), partial(_overlay_commit, repo))
            if index > 0:
                tether[kind].append(ours)
                tree_ref[kind].append(theirs)

    results = []
    for kind in kinds:
        repo = repos[kind]
        scratch = WORK / f"compose-{kind.key}" / "checkout"
        log(f"compose: ostree checkout + cp + ostree commit, {runs.baseline} runs ({kind.title})")
        prepare, measured = partial(_fresh_checkout, repo, scratch), partial(_checkout_commit, repo, scratch)
        naive = repeat(runs.baseline, prepare, measured)
        fixtures.remove_tree(scratch)
        samples = Sample(tuple(tether[kind])), Sample(tuple(tree_ref[kind]))
        results.append(ComposeResult(kind, repo.entries, *samples, naive))
    return results, repos[SMALL]


def profile_compose(repo: ComposeRepo, runs: int) -> list[ProfileLine]:
    profiler = cProfile.Profile()
    for _ in range(runs):
        _forget_compositions(repo)
        settle()
        profiler.enable()
        _tether_compose(repo)
        profiler.disable()
    return top_functions(pstats.Stats(profiler), TETHER_PACKAGE, runs, limit=14)


# --- 2. and 3. upgrade and its peak memory ----------------------------------------------------


def _tether_upgrade(sysroot: Path) -> Measured:
    return run_measured([*fixtures.tether_command(), "upgrade", "--sysroot", str(sysroot)])


def _plain_upgrade(setup: UpgradeSetup, sysroot: Path) -> tuple[Measured, Measured]:
    repo = sysroot / "ostree" / "repo"
    pull = run_measured(["ostree", f"--repo={repo}", "pull-local", str(setup.vendor), setup.composed])
    deploy = run_measured(
        ["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={fixtures.STATEROOT}", setup.composed]
    )
    return pull, deploy


def bench_upgrade(trees: Trees, kind: OsKind, runs: Runs) -> UpgradeResult:
    work = WORK / f"upgrade-{kind.key}"
    log(f"upgrade: preparing the vendor repo and an installed sysroot ({kind.title})")
    setup = fixtures.upgrade_setup(trees, kind, work)
    with_tether, with_ostree = work / "sysroot-tether", work / "sysroot-ostree"
    tether: list[Measured] = []
    pulls: list[Measured] = []
    deploys: list[Measured] = []
    same = True
    # run 0 warms up (page cache, bytecode of modules edited since the last run)
    for index in range(runs.upgrade + 1):
        log(f"upgrade: run {index}/{runs.upgrade} ({kind.title}){' (warm-up)' if index == 0 else ''}")
        for sysroot in (with_tether, with_ostree):
            fixtures.remove_tree(sysroot)
            fixtures.copy_tree(setup.template, sysroot)
        # alternate which goes first; each starts with nothing left to write back
        for side in ("tether", "ostree") if index % 2 == 0 else ("ostree", "tether"):
            settle()
            if side == "tether":
                ours = _tether_upgrade(with_tether)
            else:
                pull, deploy = _plain_upgrade(setup, with_ostree)
        if index > 0:
            tether.append(ours)
            pulls.append(pull)
            deploys.append(deploy)
        same = same and all(fixtures.deployed(s, setup.composed) for s in (with_tether, with_ostree))
    log(f"upgrade: one more tether run under cProfile ({kind.title})")
    fixtures.remove_tree(with_tether)
    fixtures.copy_tree(setup.template, with_tether)
    profile = _profile_upgrade(with_tether, work / "upgrade.prof")
    fixtures.remove_tree(with_tether)
    fixtures.remove_tree(with_ostree)
    return UpgradeResult(
        kind=kind,
        entries=trees.entries(kind),
        tether=Sample(tuple(m.seconds for m in tether)),
        plain=Sample(tuple(p.seconds + d.seconds for p, d in zip(pulls, deploys, strict=True))),
        pull_local=Sample(tuple(m.seconds for m in pulls)),
        deploy=Sample(tuple(m.seconds for m in deploys)),
        tether_rss_kib=max(m.max_rss_kib for m in tether),
        pull_local_rss_kib=max(m.max_rss_kib for m in pulls),
        deploy_rss_kib=max(m.max_rss_kib for m in deploys),
        same_commit=same,
        profile=profile,
    )


def _profile_upgrade(sysroot: Path, output: Path) -> list[ProfileLine]:
    settle()
    profiler = [sys.executable, "-m", "cProfile", "-o", str(output)]
    run_quiet([*profiler, "-m", "tether", "upgrade", "--sysroot", str(sysroot)])
    return top_functions(pstats.Stats(str(output)), TETHER_PACKAGE, 1, limit=16)


def startup_time(runs: int) -> tuple[Sample, Sample]:
    """Interpreter start alone, and with the modules `tether upgrade` imports."""

    def series(cmd: list[str]) -> Sample:
        return repeat(runs, lambda: None, partial(run_quiet, cmd))

    bare = series([sys.executable, "-c", "pass"])
    imports = series([sys.executable, "-c", "import tether.cli, tether.upgrade"])
    return bare, imports


# --- 4. native resources vs Ansible ----------------------------------------------------------


def _compose_changes(repo: ChangesRepo) -> None:
    compose(Repo(repo.path), repo.os_commit, repo.bundle_commit)


def _play(bundle: Bundle, tree: Path, changed: list[int]) -> None:
    """The bundle's playbook as tether runs one, on a writable copy of the OS tree; note `changed=`."""
    result = run_playbook_in(bundle, bundle.playbooks[0], tree, Sandbox.compose(tree, bundle.root))
    changed.append(result.summary.get("changed", -1))


def _nothing() -> None:
    pass


def bench_changes(runs: Runs) -> ChangesResult:
    work = WORK / "changes"
    log("native vs Ansible: preparing the Debian tree with Ansible, its bare repo and the two bundles")
    repo = changes.changes_repo(work)
    playbook_bundle = load_bundle(repo.ansible_bundle)
    tree = work / "tree"
    forget, native = partial(_forget_compositions, repo), partial(_compose_changes, repo)
    native_first: list[float] = []
    native_again: list[float] = []
    ansible_first: list[float] = []
    ansible_again: list[float] = []
    changed_first: list[int] = []
    changed_again: list[int] = []
    timed(forget, native)  # warm-up
    started = time.monotonic()
    for index in range(runs.ansible):
        elapsed = time.monotonic() - started
        if index >= 2 and elapsed + elapsed / index > CHANGES_BUDGET_SECONDS:
            log(f"native vs Ansible: stopping after {index} rounds, another would end past the time budget")
            break
        log(f"native vs Ansible: round {index + 1}/{runs.ansible}, two playbook runs on a fresh tree copy")
        native_first += [timed(forget, native) for _ in range(runs.native)]
        # after the native runs: the copy's writes must not weigh on them (syncfs ends a compose)
        fixtures.remove_tree(tree)
        fixtures.copy_tree(repo.os_root, tree)
        ansible_first.append(timed(_nothing, partial(_play, playbook_bundle, tree, changed_first)))
        # the last composition is still there: composing again is a cache hit
        native_again += [timed(_nothing, native) for _ in range(runs.native)]
        ansible_again.append(timed(_nothing, partial(_play, playbook_bundle, tree, changed_again)))
    # what Ansible made must be what tether composed
    composed_etc = work / "composed-etc"
    composed_etc.mkdir()
    run_quiet(
        [
            "ostree",
            f"--repo={repo.path}",
            "checkout",
            f"--subpath=/usr{changes.CHANGES_ROOT}",
            compose(Repo(repo.path), repo.os_commit, repo.bundle_commit).checksum,
            str(composed_etc / changes.CHANGES_ROOT.removeprefix("/etc/")),
        ]
    )
    same = changes.etc_image(composed_etc) == changes.etc_image(tree / "usr/etc")
    fixtures.remove_tree(tree)
    return ChangesResult(
        entries=repo.entries,
        native_first=Sample(tuple(native_first)),
        native_again=Sample(tuple(native_again)),
        ansible_first=Sample(tuple(ansible_first)),
        ansible_again=Sample(tuple(ansible_again)),
        changed_first=tuple(changed_first),
        changed_again=tuple(changed_again),
        same_result=same,
    )


# --- 5. drift ---------------------------------------------------------------------------------


IMPORT_DRIFT = "import tether.cli, tether.drift"  # what the `tether drift` CLI imports


def _drift(sysroot: Path) -> None:
    drift(sysroot, fixtures.STATEROOT)


def _drift_cli(cmd: list[str]) -> None:
    """`tether drift`: exit 0 (no drift) or 5 (drift found) are both a run that worked."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stdout}{proc.stderr}")


def bench_drift(trees: Trees, runs: Runs) -> DriftResult:
    work = WORK / "drift"
    log("drift: installing the Debian tree with a bundle (files, a unit, kargs, a deploy hook), upgrading")
    sysroot = changes.drift_machine(trees, work)
    # nothing has drifted on this machine: whatever drift() finds is reported as a false finding
    deployment, findings = drift(sysroot, fixtures.STATEROOT)
    handle = Sysroot(sysroot)
    handle.load()
    root = handle.deployment_dir(deployment)
    deployments = len(handle.deployments())
    log(f"drift: {runs.drift} in-process runs, {runs.drift_cli} CLI runs")
    in_process = repeat(runs.drift, _nothing, partial(_drift, sysroot))
    # the CLI, with Python's start-up and tether's imports alone in alternation, to split its time
    commands = (
        partial(_drift_cli, [*fixtures.tether_command(), "drift", "--sysroot", str(sysroot)]),
        partial(run_quiet, [sys.executable, "-c", "pass"]),
        partial(run_quiet, [sys.executable, "-c", IMPORT_DRIFT]),
    )
    series: tuple[list[float], ...] = ([], [], [])
    for index in range(runs.drift_cli + 1):  # round 0 warms up
        for values, command in zip(series, commands, strict=True):
            seconds = timed(_nothing, command)
            if index > 0:
                values.append(seconds)
    whole, python_start, imports = (Sample(tuple(values)) for values in series)
    profiler = cProfile.Profile()
    for _ in range(runs.profiled):
        settle()
        profiler.enable()
        _drift(sysroot)
        profiler.disable()
    profile = top_functions(pstats.Stats(profiler), TETHER_PACKAGE, runs.profiled, limit=12)
    result = DriftResult(
        etc_entries=count_entries(root / "etc"),
        deployments=deployments,
        findings=tuple(f"{f.kind} {f.subject}" for f in findings),
        in_process=in_process,
        cli=whole,
        python_start=python_start,
        imports=imports,
        profile=profile,
    )
    fixtures.remove_tree(work)
    return result


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each (to try the benchmark out)")
    parser.add_argument("--keep", action="store_true", help="keep bench/work for inspection")
    args = parser.parse_args(argv)
    runs = QUICK if args.quick else FULL

    started = time.monotonic()
    fixtures.remove_tree(WORK)
    WORK.mkdir(parents=True)
    machine = machine_facts(WORK)
    trees = Trees(WORK / "trees")
    log("the Debian tree (built and cached under .cache/ the first time: minutes)")
    trees.debian_root()

    compose_results, small_repo = bench_compose(trees, runs)
    log("compose: profile on the small synthetic OS")
    compose_profile = profile_compose(small_repo, runs.profiled)

    upgrade_results = [bench_upgrade(trees, kind, runs) for kind in (SMALL, DEBIAN)]
    changes_result = bench_changes(runs)
    drift_result = bench_drift(trees, runs)
    log("tether start-up")
    python_start, tether_imports = startup_time(max(runs.baseline, 3))

    report = Report(
        machine={**machine, "load at end": load_average()},
        runs=asdict(runs),
        compose=compose_results,
        compose_profile=compose_profile,
        upgrade=upgrade_results,
        python_start=python_start,
        tether_imports=tether_imports,
        changes=changes_result,
        drift=drift_result,
        duration=time.monotonic() - started,
        quick=args.quick,
    )
    text = render(report)
    RESULTS.write_text(text)
    print(text)
    if not args.keep:
        fixtures.remove_tree(WORK)
    log(f"wrote {RESULTS.relative_to(REPO_ROOT)} in {time.monotonic() - started:.0f} s")
    return 0

