"""Fixtures shared by tether's tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.http import serve_directory
from tests.world import World


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Serve directories over HTTP on 127.0.0.1: `url = http_server(path)`; stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def serve(directory: Path) -> str:
            nonlocal count
            count += 1
            return stack.enter_context(serve_directory(directory, tmp_path / f"nginx-{count}"))

        yield serve


def _clear_immutable_deployments(root: Path) -> None:
    from tether.edge.ostree import clear_immutable

    for deployment in root.glob("**/ostree/deploy/*/deploy/*"):
        if deployment.is_dir() and not deployment.is_symlink():
            clear_immutable(deployment)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """An OS repo published by a vendor and an empty sysroot; deployments made mutable again at teardown."""
    yield World(tmp_path)
    _clear_immutable_deployments(tmp_path)
