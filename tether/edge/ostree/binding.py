"""The libostree binding and what every part of the edge shares.

`gi.require_version` pins the binding before anything imports it; GLib errors
become `OstreeError`s here; commit metadata is built as GVariants here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import GLib

# Typed as Any: the published OSTree stubs lag the typelib (no new_and_connect,
# non-nullable arguments libostree accepts as NULL).
OSTree: Any = importlib.import_module("gi.repository.OSTree")

from tether.errors import TetherError

MetadataValue = str | int | bool | list[str]

log = logging.getLogger("tether")


class OstreeError(TetherError):
    """A libostree operation failed."""


@contextlib.contextmanager
def _glib_errors(what: str) -> Iterator[None]:
    try:
        yield
    except GLib.Error as e:
        raise OstreeError(f"{what}: {e.message}") from e


@contextlib.contextmanager
def _stdout_to_log(what: str) -> Iterator[None]:
    """libostree's cleanup g_print()s "Freed objects: ..." on fd 1; keep our stdout ours."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                log.info("%s: %s", what, line)


def _variant(value: MetadataValue) -> GLib.Variant:
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("t", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    return GLib.Variant("as", list(value))


def _metadata_variant(metadata: Mapping[str, MetadataValue]) -> GLib.Variant:
    return GLib.Variant("a{sv}", {k: _variant(v) for k, v in sorted(metadata.items())})


def _hex(checksum_bytes: Any) -> str:
    return str(OSTree.checksum_from_bytes(bytes(checksum_bytes)))
