"""The test-tree builders: layout of the synthetic and Debian trees, and committing them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import ostree_trees as ot

TS = 1_700_000_000


def ostree(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["ostree", f"--repo={repo}", *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout


def test_synthetic_tree_layout(tmp_path: Path) -> None:
    root = ot.synthetic_tree(tmp_path / "t", version="7", files=3, extra={"usr/share/x/y": b"hi"})
    kdir = root / "usr/lib/modules" / ot.KERNEL_VERSION
    assert (kdir / "vmlinuz").read_bytes() == ot.KERNEL_BYTES
    assert (kdir / "initramfs.img").read_bytes() == ot.INITRAMFS_BYTES
    assert "VERSION_ID=7\n" in (root / "usr/etc/os-release").read_text()
    assert "VERSION_ID=7\n" in (root / "usr/lib/os-release").read_text()
    assert "root:x:0:0:" in (root / "usr/etc/passwd").read_text()
    assert "video:x:44:" in (root / "usr/etc/group").read_text()
    assert (root / "usr/share/zoneinfo/Europe/Madrid").is_file()
    assert "WantedBy=multi-user.target" in (root / "usr/lib/systemd/system/sshd.service").read_text()
    wants = root / "usr/etc/systemd/system/multi-user.target.wants/sshd.service"
    assert os.readlink(wants) == "/usr/lib/systemd/system/sshd.service"
    for name, target in {"bin": "usr/bin", "home": "var/home", "ostree": "sysroot/ostree"}.items():
        assert os.readlink(root / name) == target
    for d in ("boot", "dev", "proc", "sys", "run", "tmp", "var", "sysroot"):
        assert (root / d).is_dir() and not any((root / d).iterdir())
    assert sorted(p.name for p in (root / "usr/share/filler/d000").iterdir()) == [
        "f00000",
        "f00001",
        "f00002",
    ]
    assert (root / "usr/share/x/y").read_bytes() == b"hi"
    assert not (root / "etc").exists()
    assert ot.special_files(root) == []


def test_synthetic_tree_rejects_escaping_extra(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ot.synthetic_tree(tmp_path / "t", extra={"../evil": b""})
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("")
    with pytest.raises(FileExistsError):
        ot.synthetic_tree(tmp_path / "full")


def test_versions_differ_only_where_asked(tmp_path: Path) -> None:
    a = ot.synthetic_tree(tmp_path / "a", version="1", files=10, changed_files=2)
    b = ot.synthetic_tree(tmp_path / "b", version="2", files=10, changed_files=2)
    repo = ot.init_repo(tmp_path / "repo")
    ca = ot.commit_tree(repo, a, "os/x86_64/stable", version="1", timestamp=TS)
    cb = ot.commit_tree(repo, b, "os/x86_64/stable", version="2", timestamp=TS + 1)
    changed = sorted(line.split()[-1] for line in ostree(repo, "diff", ca, cb).splitlines())
    assert changed == [
        "/usr/etc/motd",
        "/usr/etc/os-release",
        "/usr/lib/os-release",
        "/usr/share/filler/d000/f00000",
        "/usr/share/filler/d000/f00001",
    ]
    # The default parent is the ref's previous commit, as in a vendor's OS history.
    assert ostree(repo, "rev-parse", f"{cb}^").strip() == ca


def test_commit_lists_kernel_and_metadata(tmp_path: Path) -> None:
    root = ot.synthetic_tree(tmp_path / "t")
    repo = ot.init_repo(tmp_path / "repo")
    csum = ot.commit_tree(
        repo,
        root,
        "os/x86_64/stable",
        subject="OS 1",
        version="1",
        timestamp=TS,
        metadata={"vendor.build": "42"},
    )
    assert len(csum) == 64 and ostree(repo, "rev-parse", "os/x86_64/stable").strip() == csum
    listing = ostree(repo, "ls", "-R", csum, f"/usr/lib/modules/{ot.KERNEL_VERSION}")
    assert f"/usr/lib/modules/{ot.KERNEL_VERSION}/vmlinuz" in listing
    assert f"/usr/lib/modules/{ot.KERNEL_VERSION}/initramfs.img" in listing
    assert ostree(repo, "show", "--print-metadata-key=version", csum).strip() == "'1'"
    assert ostree(repo, "show", "--print-metadata-key=vendor.build", csum).strip() == "'42'"
    assert "os/x86_64/stable" in ostree(repo, "show", "--print-metadata-key=ostree.ref-binding", csum)
    assert "OS 1" in ostree(repo, "log", csum)
    ot.update_summary(repo)
    assert (repo / "summary").exists()
    unbound = ot.commit_tree(repo, root, "os/unbound", timestamp=TS, ref_binding=False)
    assert "ostree.ref-binding" not in ostree(repo, "show", "--raw", unbound)


def test_same_tree_same_checksum(tmp_path: Path) -> None:
    root = ot.synthetic_tree(tmp_path / "t", version="3")
    repo = ot.init_repo(tmp_path / "repo")
    first = ot.commit_tree(repo, root, "os/a", version="3", timestamp=TS, parent="none")
    again = ot.commit_tree(repo, root, "os/a", version="3", timestamp=TS, parent="none")
    assert first == again
    # A tree built again elsewhere, into another repo mode, is the same commit (the ref is part
    # of it: the ostree CLI writes it to ostree.ref-binding).
    other = ot.synthetic_tree(tmp_path / "t2", version="3")
    bare = ot.init_repo(tmp_path / "bare", mode="bare")
    assert ot.commit_tree(bare, other, "os/a", version="3", timestamp=TS) == first
    assert ot.commit_tree(bare, other, "os/b", version="3", timestamp=TS, parent="none") != first


def test_large_synthetic_tree_spreads_files(tmp_path: Path) -> None:
    root = ot.synthetic_tree(tmp_path / "t", files=1203, per_dir=500)
    dirs = sorted((root / "usr/share/filler").iterdir())
    assert [d.name for d in dirs] == ["d000", "d001", "d002"]
    assert [len(list(d.iterdir())) for d in dirs] == [500, 500, 203]


def test_tree_path_follows_symlinks_as_deployed(tmp_path: Path) -> None:
    root = ot.synthetic_tree(tmp_path / "t")
    (root / "usr/etc/issue").symlink_to("../usr/lib/os-release")
    assert ot.tree_path(root, "/etc/issue") == root / "usr/lib/os-release"
    assert (
        ot.tree_path(root, "/lib/systemd/system/sshd.service") == root / "usr/lib/systemd/system/sshd.service"
    )
    assert ot.tree_path(root, "/etc/systemd/system/multi-user.target.wants/sshd.service").is_file()


def test_debian_tree_without_debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ot.DebootstrapMissing, match="debootstrap"):
        ot.debian_tree(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.tar"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TETHER_TEST_CACHE", str(tmp_path))
    assert ot.default_cache_dir() == tmp_path
    monkeypatch.delenv("TETHER_TEST_CACHE")
    assert ot.default_cache_dir() == Path(__file__).resolve().parent.parent / ".cache"


@pytest.mark.slow
def test_debian_tree(tmp_path: Path) -> None:
    started = time.monotonic()
    root = ot.debian_tree()
    built_in = time.monotonic() - started
    assert "VERSION_CODENAME=bookworm" in ot.tree_path(root, "/etc/os-release").read_text()
    assert (root / "usr/bin/systemctl").is_file()
    assert (root / f"usr/lib/modules/{ot.KERNEL_VERSION}/vmlinuz").is_file()
    assert "d /var/tmp 1777" in (root / "usr/lib/tmpfiles.d/tether-var.conf").read_text()
    assert not (root / "etc").exists() and (root / "usr/etc/passwd").is_file()
    assert (root / "usr/etc/machine-id").read_bytes() == b""
    for name, target in {
        "home": "var/home",
        "root": "var/roothome",
        "opt": "var/opt",
        "media": "run/media",
        "ostree": "sysroot/ostree",
    }.items():
        assert os.readlink(root / name) == target
    assert list((root / "var").iterdir()) == [] and list((root / "boot").iterdir()) == []
    assert ot.special_files(root) == []
    entries = ot.count_entries(root)
    assert 2_000 <= entries <= 30_000, entries
    # A second call is a cache hit.
    started = time.monotonic()
    assert ot.debian_tree() == root
    assert time.monotonic() - started < 5

    # A private copy, and a work directory left by a killed run is cleared on the next call.
    name = f"debian-bookworm-{ot.debian_recipe_hash()}"
    stale = ot.default_cache_dir() / f".{name}.extract-killed"
    (stale / "root").mkdir(parents=True)
    copy = ot.debian_tree(dest=tmp_path / "copy")
    assert not stale.exists()
    assert ot.count_entries(copy) == entries
    assert (copy / "usr/bin/passwd").stat().st_mode & 0o4000

    repo = ot.init_repo(tmp_path / "repo")
    started = time.monotonic()
    csum = ot.commit_tree(repo, root, "debian/x86_64/bookworm", version="12", timestamp=TS)
    committed_in = time.monotonic() - started
    assert "/usr/bin/systemctl" in ostree(repo, "ls", csum, "/usr/bin/systemctl")
    print(f"debian tree: {entries} entries, obtained in {built_in:.1f}s, committed in {committed_in:.1f}s")
