"""No state drift: Ansible playbooks and deploy hooks under the ledger, on a real Debian with Ansible.

The scenario of the seed thread: a playbook line removed from the bundle must
leave no trace after the next upgrade, while what the admin changed by hand
stays (and what the admin changed on top of a step is kept and reported).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.ostree_trees import debian_tree
from tests.world import World

pytestmark = pytest.mark.slow

ANSIBLE_PACKAGES = ("ansible-core", "python3-cffi-backend")

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[[ansible]]
playbook = "ansible/site.yml"
extra-vars = {{ role = "kiosk" }}
"""

PLAYBOOK_V1 = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: a line in an OS default
      ansible.builtin.lineinfile:
        path: /etc/systemd/journald.conf
        line: "Storage=volatile"
    - ansible.builtin.file:
        path: /etc/kiosk
        state: directory
        mode: "0755"
    - ansible.builtin.copy:
        dest: /etc/kiosk/a.conf
        content: "a from v1 for {{ role }}\\n"
    - ansible.builtin.copy:
        dest: /etc/kiosk/b.conf
        content: "b from v1\\n"
        owner: root
        group: adm
    - ansible.builtin.file:
        path: /etc/kiosk.d
        state: directory
"""

PLAYBOOK_V2 = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.lineinfile:
        path: /etc/systemd/journald.conf
        line: "RuntimeMaxUse=16M"
"""


@pytest.fixture
def debian(world: World) -> World:
    tree = debian_tree(dest=world.root / "os-1", extra_packages=ANSIBLE_PACKAGES)
    world.publish_os(tree=tree)
    return world


def publish(world: World, version: str, playbook: str) -> None:
    world.publish_bundle("kiosk", BUNDLE.format(version=version), {"ansible/site.yml": playbook})


def second_os(world: World) -> None:
    tree = debian_tree(dest=world.root / "os-2", extra_packages=ANSIBLE_PACKAGES)
    (tree / "usr/etc/motd").write_text("Debian, second OS commit\n")
    world.publish_os(tree=tree)


def ledger_entries(world: World) -> dict[str, dict[str, object]]:
    directory = world.sysroot / "ostree/deploy/exampleos/var/lib/tether/ledger"
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")}


def test_playbook_line_removed_leaves_no_trace(debian: World) -> None:
    world = debian
    publish(world, "1", PLAYBOOK_V1)
    result = world.install()
    assert result.code == 0, result.err
    assert "changed=" in result.err
    etc = world.etc()
    journald = (etc / "systemd/journald.conf").read_text()
    assert "Storage=volatile" in journald
    assert (etc / "kiosk/a.conf").read_text() == "a from v1 for kiosk\n"
    assert (etc / "kiosk/b.conf").stat().st_gid == 4
    assert (etc / "kiosk.d").is_dir()
    [entry] = ledger_entries(world).values()
    recorded = {p["path"] for p in entry["paths"]}  # type: ignore[union-attr]
    assert {"systemd/journald.conf", "kiosk", "kiosk/a.conf", "kiosk/b.conf", "kiosk.d"} <= recorded
    [status] = world.status()
    assert status["steps"][0]["kind"] == "ansible" and status["steps"][0]["paths"] >= 5

    # the admin edits one copied file and adds a file of their own
    (etc / "kiosk/a.conf").write_text("a, edited by the admin\n")
    (etc / "admin.conf").write_text("mine\n")
    v1_root = world.deployment_root()

    second_os(world)
    publish(world, "2", PLAYBOOK_V2)
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert "Conflict: /etc/kiosk/a.conf" in result.err
    etc = world.etc()
    journald = (etc / "systemd/journald.conf").read_text()
    assert "Storage=volatile" not in journald, "the v1 line is gone"
    assert "RuntimeMaxUse=16M" in journald
    assert not (etc / "kiosk/b.conf").exists(), "the unedited copy is gone"
    assert not (etc / "kiosk.d").exists(), "the directory v1 made is gone"
    assert (etc / "kiosk/a.conf").read_text() == "a, edited by the admin\n", "the edited copy is kept"
    assert (etc / "admin.conf").read_text() == "mine\n"
    saved = list((world.sysroot / "ostree/deploy/exampleos/var/lib/tether/saved").glob("*/etc/kiosk/a.conf"))
    assert saved and saved[0].read_text() == "a, edited by the admin\n"

    drift = world.run("drift", "--json")
    assert drift.code == 5, drift
    findings = json.loads(drift.out)["findings"]
    assert any(f["kind"] == "conflict" and f["path"] == "/etc/kiosk/a.conf" for f in findings)

    # the v1 deployment's /etc is intact for a rollback
    assert "Storage=volatile" in (v1_root / "etc/systemd/journald.conf").read_text()
    assert (v1_root / "etc/kiosk/b.conf").exists()
    assert world.run("rollback").code == 0
    assert world.deployment_root() == v1_root

    # apply twice: the second upgrade changes nothing
    assert world.run("upgrade").code == 0  # back to v2 from the rolled-back v1
    before = world.snapshot()
    again = world.run("upgrade")
    assert again.code == 0 and "No update available" in again.out
    assert world.snapshot() == before


HOOK_V1 = """#!/bin/sh
set -eu
echo "Storage=volatile" >> /etc/systemd/journald.conf
mkdir -p /etc/kiosk
echo "from the hook" > /etc/kiosk/hook.conf
"""

HOOK_V2 = """#!/bin/sh
set -eu
echo "RuntimeMaxUse=16M" >> /etc/systemd/journald.conf
"""

HOOK_BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[[hook]]
stage = "deploy"
run = "hooks/setup.sh"

[[hook]]
stage = "deploy"
run = "hooks/second.sh"
"""


def test_hook_changes_are_reset_and_a_crash_between_steps_converges(debian: World) -> None:
    world = debian
    second = {"hooks/second.sh": "#!/bin/sh\necho second > /etc/second.conf\n"}
    world.publish_bundle("kiosk", HOOK_BUNDLE.format(version="1"), {"hooks/setup.sh": HOOK_V1, **second})
    assert world.install().code == 0
    assert "Storage=volatile" in (world.etc() / "systemd/journald.conf").read_text()

    second_os(world)
    world.publish_bundle("kiosk", HOOK_BUNDLE.format(version="2"), {"hooks/setup.sh": HOOK_V2, **second})
    before = world.snapshot()
    # killed between the two deploy hooks: nothing visible changed
    tether = Path(os.environ.get("TETHER", Path(__file__).parents[1] / ".venv/bin/tether"))
    killed = subprocess.run(
        [str(tether), "upgrade", "--sysroot", str(world.sysroot)],
        env={**os.environ, "TETHER_FAULT": "deploy-hook-done@1"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed
    assert world.snapshot() == before
    result = world.run("upgrade")
    assert result.code == 0, result.err
    journald = (world.etc() / "systemd/journald.conf").read_text()
    assert "Storage=volatile" not in journald
    assert journald.count("RuntimeMaxUse=16M") == 1
    assert not (world.etc() / "kiosk").exists()
    assert (world.etc() / "second.conf").read_text() == "second\n"
    assert world.run("drift").code == 0
