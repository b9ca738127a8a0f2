"""Composition: tree-level content, compose hooks on a copy, bundle build and list."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.world import OS_REF, World, tether
from tether.edge.ostree import Repo

BUNDLE = """
[bundle]
name = "kiosk"
version = "1"
os-ref = "exampleos/x86_64/stable"

[[file]]
path = "/usr/share/kiosk/setuid-helper"
content = "#!/bin/sh\\n"
mode = "4755"

[[directory]]
path = "/etc/kiosk"
mode = "0750"
group = "video"

[[link]]
path = "/etc/kiosk/current"
target = "/usr/share/kiosk"

[[unit]]
name = "sshd.service"
enabled = "masked"
"""

HOOKED = """
[bundle]
name = "hooked"
version = "1"
os-ref = "exampleos/x86_64/stable"

[[hook]]
stage = "compose"
run = "hooks/compose.sh"
"""

COMPOSE_HOOK = """#!/bin/sh
set -e
echo "changed by a compose hook" > /etc/motd
echo "generated" > /usr/share/generated
test ! -e /var/lib/anything
"""


def test_tree_content_modes_owners_and_masks(world: World) -> None:
    os1 = world.publish_os()
    bundle = world.publish_bundle("kiosk", BUNDLE)
    result = tether("compose", "--repo", world.repo, "--os", os1, "--bundle", bundle)
    assert result.code == 0, result.err
    checksum = result.out.split()[-1]
    tree = Repo(world.repo).tree(checksum)
    assert tree.read("usr/share/kiosk/setuid-helper") == b"#!/bin/sh\n"
    listing = subprocess.run(
        [
            "ostree",
            f"--repo={world.repo}",
            "ls",
            checksum,
            "/usr/share/kiosk/setuid-helper",
            "/usr/etc/kiosk",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-04755 0 0" in listing
    assert "d00750 0 44" in listing, "group video resolved against the OS tree's /usr/etc/group"
    assert tree.readlink("usr/etc/kiosk/current") == "/usr/share/kiosk"
    assert tree.readlink("usr/etc/systemd/system/sshd.service") == "/dev/null"
    assert tree.kind("usr/etc/systemd/system/multi-user.target.wants/sshd.service") is None
    metadata = Repo(world.repo).commit(checksum).metadata
    assert metadata["tether.os-commit"] == os1
    assert metadata["tether.bundle-commit"] == bundle
    assert metadata["version"] == "1+kiosk.1"
    os_timestamp = Repo(world.repo).commit(os1).timestamp
    bundle_timestamp = Repo(world.repo).commit(bundle).timestamp
    assert Repo(world.repo).commit(checksum).timestamp == max(os_timestamp, bundle_timestamp)


def test_compose_hooks_run_on_a_copy(world: World) -> None:
    os1 = world.publish_os()
    bundle = world.publish_bundle("hooked", HOOKED, {"hooks/compose.sh": COMPOSE_HOOK})
    result = tether("compose", "--repo", world.repo, "--os", os1, "--bundle", bundle)
    assert result.code == 0, result.err
    repo = Repo(world.repo)
    composed = repo.tree(result.out.split()[-1])
    assert composed.read("usr/etc/motd") == b"changed by a compose hook\n"
    assert composed.read("usr/share/generated") == b"generated\n"
    assert composed.kind("etc") is None, "no /etc beside /usr/etc in the committed tree"
    assert repo.tree(os1).read("usr/etc/motd") == b"Tether Test OS 1\n", "the OS commit is untouched"
    subprocess.run(["ostree", f"--repo={world.repo}", "fsck", "--quiet"], check=True)


def test_failing_compose_hook_is_a_step_failure(world: World) -> None:
    os1 = world.publish_os()
    bundle = world.publish_bundle("hooked", HOOKED, {"hooks/compose.sh": "#!/bin/sh\nexit 7\n"})
    result = tether("compose", "--repo", world.repo, "--os", os1, "--bundle", bundle)
    assert result.code == 1
    assert "compose hook hooks/compose.sh" in result.err and "exited with code 7" in result.err
    assert not Repo(world.repo).refs("tether/compose")


def test_compose_refuses_an_unbound_pair(world: World) -> None:
    os1 = world.publish_os()
    bundle = world.publish_bundle("kiosk", BUNDLE, bind=[os1])
    os2 = world.publish_os()
    result = tether("compose", "--repo", world.repo, "--os", os2, "--bundle", bundle)
    assert result.code == 3
    assert "not bound" in result.err


def test_bundle_build_binding_and_list(world: World) -> None:
    os1 = world.publish_os()
    bundle = world.publish_bundle("kiosk", BUNDLE)
    metadata = Repo(world.repo).commit(bundle).metadata
    assert metadata["tether.os-commits"] == [os1]
    assert metadata["tether.os-ref"] == OS_REF
    result = tether("bundle", "list", "--repo", world.repo, "--json")
    assert result.code == 0
    [listed] = json.loads(result.out)["bundles"]
    assert listed["ref"] == "exampleos/x86_64/kiosk" and listed["os_commits"] == [os1]
    assert json.loads(tether("bundle", "list", "--repo", world.repo, "--os", "0" * 64, "--json").out) == {
        "bundles": []
    }


def test_bundle_build_refuses_a_missing_commit(world: World, tmp_path: Path) -> None:
    world.publish_os()
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "tether.toml").write_text(BUNDLE)
    refs_before = Repo(world.repo).refs()
    result = tether(
        "bundle", "build", directory, "--repo", world.repo, "--ref", "x/kiosk", "--bind", "ab" * 32
    )
    assert result.code == 2
    assert "not in" in result.err
    assert Repo(world.repo).refs() == refs_before


def test_manifest_error_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "tether.toml").write_text(
        '[bundle]\nname = "kiosk"\nversion = "1"\nos-ref = "x"\n\n'
        '[[file]]\npath = "/etc/motd"\nmode = "99x"\ncontent = "x"\n'
    )
    result = tether("bundle", "check", directory)
    assert result.code == 2
    assert f"{directory}/tether.toml:8:file[0].mode" in result.err
    assert "Traceback" not in result.err


def test_cleanup_removes_what_nothing_references(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.replace('version = "1"', 'version = "1"'))
    assert world.install().code == 0
    for version in ("2", "3"):
        world.publish_os()
        world.publish_bundle("kiosk", BUNDLE.replace('version = "1"', f'version = "{version}"'))
        assert world.run("upgrade").code == 0
    repo = Repo(world.sysroot / "ostree/repo")
    assert len(repo.refs("tether/compose")) == 3
    result = world.run("cleanup")
    assert result.code == 0, result.err
    deployed = {d["checksum"] for d in world.status()}
    assert set(repo.refs("tether/compose").values()) == deployed
    ledger = world.sysroot / "ostree/deploy/exampleos/var/lib/tether/ledger"
    assert len([p for p in ledger.glob("*.json") if not p.name.endswith(".etc.json")]) == 2
