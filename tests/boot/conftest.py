"""Fixtures of the boot tier (the cached bootable OS, a world served over HTTP) and its figures.

The figures `tests.boot.machine.FIGURES` collected (image build, install, each boot, the tier)
are printed at the end of the run and written to `<cache>/boot-tier.txt`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.boot import image as boot_image
from tests.boot.machine import FIGURES
from tests.http import serve_directory
from tests.ostree_trees import default_cache_dir
from tests.world import World
from tether.edge.ostree import clear_immutable


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    lines = [f"{what}: {seconds:.1f} s" for what, seconds in FIGURES.items()]
    terminalreporter.write_sep("-", "boot tier figures")
    for line in lines:
        terminalreporter.write_line(line)
    try:
        (default_cache_dir() / "boot-tier.txt").write_text("\n".join(lines) + "\n")
    except OSError:
        pass


@pytest.fixture(scope="module")
def bootable() -> boot_image.BootableOS:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (make setup installs qemu-system-x86)")
    started = time.monotonic()
    base = boot_image.bootable_os()
    FIGURES["bootable OS (build or cache)"] = time.monotonic() - started
    return base


@pytest.fixture(scope="module")
def served_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    root = tmp_path_factory.mktemp("boot")
    world = World(root / "world")
    with serve_directory(world.repo, root / "nginx") as url:
        world.url = url
        yield world, url
    # ostree makes deployment roots immutable: without this, pytest could not remove them later.
    for deployment in root.glob("**/ostree/deploy/*/deploy/*"):
        if deployment.is_dir() and not deployment.is_symlink():
            clear_immutable(deployment)


@pytest.fixture(scope="module")
def tier_clock() -> Iterator[None]:
    started = time.monotonic()
    yield
    FIGURES["tier total"] = time.monotonic() - started
