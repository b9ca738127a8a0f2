"""Timing, peak memory, profiles and the facts of the machine the figures come from."""

from __future__ import annotations

import os
import platform
import pstats
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one thing, in seconds (or any one unit)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def runs(self) -> int:
        return len(self.values)


def settle() -> None:
    """Write back dirty pages, so a run does not pay for the previous one's writes.

    libostree ends every transaction with syncfs(): without this, whatever the preceding
    setup step left dirty (a `cp -a` of a sysroot, a checkout) lands in the measured time.
    """
    os.sync()


def timed(prepare: Callable[[], None], measured: Callable[[], None]) -> float:
    """Seconds `measured` takes, after `prepare` and a write-back."""
    prepare()
    settle()
    start = time.perf_counter()
    measured()
    return time.perf_counter() - start


def repeat(runs: int, prepare: Callable[[], None], measured: Callable[[], None]) -> Sample:
    """`timed` `runs` times after an untimed warm-up."""
    timed(prepare, measured)
    return Sample(tuple(timed(prepare, measured) for _ in range(runs)))


def paired_ratio(numerator: Sample, denominator: Sample) -> float:
    """The median of the run-by-run ratios of two series measured in alternation.

    Both sides of a pair ran under the same conditions (other load on the machine, page cache),
    so this is steadier than the ratio of the two medians.
    """
    if numerator.runs != denominator.runs:
        raise ValueError("paired series must have as many runs")
    return statistics.median(a / b for a, b in zip(numerator.values, denominator.values, strict=True))


@dataclass(frozen=True)
class Measured:
    seconds: float
    max_rss_kib: int


def run_measured(cmd: list[str]) -> Measured:
    """Run `cmd` under `/usr/bin/time -v`: its wall time and its peak resident set."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as report:
        start = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-v", "-o", report.name, *cmd], capture_output=True, text=True, check=False
        )
        elapsed = time.perf_counter() - start
        text = report.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if match is None:
        raise RuntimeError(f"no maximum resident set size in the output of {GNU_TIME}:\n{text}")
    return Measured(elapsed, int(match.group(1)))


def run_quiet(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{proc.stdout}{proc.stderr}")


# --- profiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileLine:
    function: str  # file:line(name), the file relative to the repository
    calls: int
    own: float  # seconds in the function itself, per profiled run (libostree calls count here)
    cumulative: float  # seconds including what it called, per profiled run


def top_functions(stats: pstats.Stats, package: Path, runs: int, limit: int) -> list[ProfileLine]:
    """The functions of `package` (a directory) with the most cumulative time."""
    lines = []
    prefix = str(package) + os.sep
    shown_from = str(package.parent) + os.sep
    for (filename, lineno, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if not filename.startswith(prefix):
            continue
        where = f"{filename.removeprefix(shown_from)}:{lineno}({name})"
        lines.append(ProfileLine(where, calls // runs, own / runs, cumulative / runs))
    lines.sort(key=lambda line: line.cumulative, reverse=True)
    return lines[:limit]


# --- the machine ------------------------------------------------------------------------------


def _first_match(path: str, pattern: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def machine_facts(work: Path) -> dict[str, str]:
    memory_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+) kB")
    version = subprocess.run(["ostree", "--version"], capture_output=True, text=True, check=False).stdout
    ostree_version = re.search(r"Version: '?([^'\n]+)'?", version)
    filesystem = subprocess.run(
        ["findmnt", "--noheadings", "--output", "FSTYPE", "--target", str(work)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "memory": f"{int(memory_kib) / 1048576:.1f} GiB" if memory_kib else "unknown",
        "kernel": platform.release(),
        "ostree": ostree_version.group(1) if ostree_version else "unknown",
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.machine(),
        "python": platform.python_version(),
        "work filesystem": filesystem or "unknown",
        "load at start": load_average(),
    }


def load_average() -> str:
    """1, 5 and 15 minute load averages: other work on the machine shows in every figure."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
