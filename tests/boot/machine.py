"""A machine of the boot tier: a disk image that tether installed, and the boots it went through.

`Machine.step` runs one step of a machine's story: a step after a failed one is skipped with
the failed step's name, instead of failing again on a machine in an unknown state.  `FIGURES`
collects the tier's timings (image build, install, each boot) for the end-of-run summary.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.boot import image as boot_image
from tests.boot.qemu import Boot, boot
from tests.world import World

# A boot under TCG takes 20-60 s; the bound leaves room for a loaded machine and for the
# upgrades the guest runs before it reports.
BOOT_TIMEOUT = float(os.environ.get("TETHER_BOOT_TIMEOUT", "600"))

FIGURES: dict[str, float] = {}


@dataclass
class Machine:
    world: World
    workdir: Path
    image: Path
    guest_url: str
    boots: list[Boot] = field(default_factory=list)
    broken: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.broken is not None:
            pytest.skip(f"an earlier step of this machine's story failed: {self.broken}")
        try:
            yield
        except BaseException:
            self.broken = name
            raise

    def boot(self, name: str, *, plan: str = "", timeout: float = BOOT_TIMEOUT, **options: Any) -> Boot:
        credentials = {"tether.plan": plan} if plan else {}
        result = boot(
            self.image, self.workdir / "boots", name, timeout=timeout, credentials=credentials, **options
        )
        FIGURES[f"boot {name}"] = result.seconds
        self.boots.append(result)
        return result


def install_machine(world: World, url: str, bundle: str, *kargs: str) -> Machine:
    """tether install into a fresh sysroot, remote pointed at the guest's view, then a disk image."""
    started = time.monotonic()
    result = world.install(bundle, *(arg for karg in kargs for arg in ("--karg", karg)))
    assert result.code == 0, result.err
    guest_url = boot_image.point_remote_at_guest_view(world.sysroot, "exampleos", url)
    image = boot_image.make_disk_image(world.sysroot, world.root / "disk.img")
    FIGURES["install + disk image"] = time.monotonic() - started
    return Machine(world, world.root, image, guest_url)
