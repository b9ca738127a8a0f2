"""Signed remotes: install --gpg-import requires signatures on OS commits and bundles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.world import World, tether

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"
"""


def make_key(homedir: Path, name: str) -> tuple[str, Path]:
    """A signing key in its own GPG home; returns (fingerprint, exported public key file)."""
    homedir.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--homedir", str(homedir), "--batch", "--quiet"]
    subprocess.run(
        [
            *gpg,
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <{name}@example.com>",
            "rsa2048",
            "sign",
            "never",
        ],
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        [*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True
    )
    fingerprint = next(line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr:"))
    public = homedir.parent / f"{name}.asc"
    public.write_bytes(
        subprocess.run([*gpg, "--armor", "--export", fingerprint], check=True, capture_output=True).stdout
    )
    return fingerprint, public


@pytest.fixture
def signed(world: World, tmp_path: Path) -> tuple[World, Path]:
    key, public = make_key(tmp_path / "gpg-vendor", "vendor")
    world.gpg = (key, tmp_path / "gpg-vendor")
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"))
    return world, public


def install_signed(world: World, public: Path) -> int:
    return tether(
        "install",
        "--sysroot",
        world.sysroot,
        "--stateroot",
        "exampleos",
        "--remote",
        f"exampleos={world.remote_url}",
        "--gpg-import",
        public,
        "--bundle",
        "exampleos:exampleos/x86_64/kiosk",
    ).code


def test_signed_install_and_upgrade(signed: tuple[World, Path]) -> None:
    world, public = signed
    assert install_signed(world, public) == 0
    assert "gpg-verify=true" in (world.sysroot / "ostree/repo/config").read_text()
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2"))
    assert world.run("upgrade").code == 0
    assert world.status()[0]["bundle"]["version"] == "2"


def test_unsigned_bundle_is_refused(signed: tuple[World, Path]) -> None:
    world, public = signed
    assert install_signed(world, public) == 0
    before = world.snapshot()
    world.gpg = None
    world.publish_bundle("kiosk", BUNDLE.format(version="2"))
    result = world.run("upgrade")
    assert result.code == 4, result
    assert world.snapshot() == before


def test_bundle_signed_by_another_key_is_refused(signed: tuple[World, Path], tmp_path: Path) -> None:
    world, public = signed
    assert install_signed(world, public) == 0
    before = world.snapshot()
    other, _ = make_key(tmp_path / "gpg-other", "other")
    world.gpg = (other, tmp_path / "gpg-other")
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2"))
    result = world.run("upgrade")
    assert result.code == 4, result
    assert world.snapshot() == before


def test_unsigned_os_commit_is_refused_at_install(world: World, tmp_path: Path) -> None:
    key, public = make_key(tmp_path / "gpg-vendor", "vendor")
    world.publish_os()  # not signed
    world.gpg = (key, tmp_path / "gpg-vendor")
    world.publish_bundle("kiosk", BUNDLE.format(version="1"))
    assert install_signed(world, public) == 4
    assert world.status() == []
    assert "[remote" not in (world.sysroot / "ostree/repo/config").read_text(), "the remote added is removed"
