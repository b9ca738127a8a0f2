"""Enforced files, `tether drift` and `upgrade --preview` on synthetic trees."""

from __future__ import annotations

import json

from tests.world import World

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"

[kernel]
arguments = ["quiet"]

[[file]]
path = "/etc/kiosk.conf"
content = "mode = {version}\\n"
policy = "enforce"

[[unit]]
name = "sshd.service"
enabled = false

[[hook]]
stage = "deploy"
run = "hooks/setup.sh"
"""

HOOK = {"hooks/setup.sh": "#!/bin/sh\necho 'hooked {version}' > /etc/hooked.conf\n"}


def publish(world: World, version: str) -> None:
    world.publish_bundle(
        "kiosk", BUNDLE.format(version=version), {k: v.format(version=version) for k, v in HOOK.items()}
    )


def test_no_drift_right_after_install(world: World) -> None:
    world.publish_os()
    publish(world, "1")
    assert world.install().code == 0
    result = world.run("drift")
    assert result.code == 0, result
    assert "No drift" in result.out


def test_drift_finds_what_differs(world: World) -> None:
    world.publish_os()
    publish(world, "1")
    assert world.install().code == 0
    etc = world.etc()
    (etc / "kiosk.conf").write_text("mode = local\n")
    (etc / "hooked.conf").write_text("edited\n")
    wants = etc / "systemd/system/multi-user.target.wants"
    (wants / "sshd.service").symlink_to("/usr/lib/systemd/system/sshd.service")
    result = world.run("drift", "--json")
    assert result.code == 5, result
    found = {(f["kind"], f["subject"]) for f in json.loads(result.out)["findings"]}
    assert found == {
        ("enforced-edited", "/etc/kiosk.conf"),
        ("ledger-changed", "/etc/hooked.conf"),
        ("unit-state", "sshd.service"),
    }


def test_enforced_file_wins_and_the_local_edit_is_saved(world: World) -> None:
    world.publish_os()
    publish(world, "1")
    assert world.install().code == 0
    (world.etc() / "kiosk.conf").write_text("mode = local\n")
    world.publish_os()
    publish(world, "2")
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert "Enforced /etc/kiosk.conf" in result.err
    assert (world.etc() / "kiosk.conf").read_text() == "mode = 2\n"
    saved = list((world.sysroot / "ostree/deploy/exampleos/var/lib/tether/saved").glob("*/etc/kiosk.conf"))
    assert [p.read_text() for p in saved] == ["mode = local\n"]
    assert world.run("drift").code == 0


def test_preview_shows_what_the_upgrade_would_do_and_changes_nothing(world: World) -> None:
    world.publish_os(extra={"usr/etc/app.conf": b"default 1\n"})
    publish(world, "1")
    assert world.install().code == 0
    (world.etc() / "app.conf").write_text("local edit\n")
    (world.etc() / "hooked.conf").write_text("edited after the hook\n")
    world.publish_os(extra={"usr/etc/app.conf": b"default 2\n"})
    world.publish_bundle(
        "kiosk",
        BUNDLE.format(version="2").replace('["quiet"]', '["splash"]'),
        {k: v.format(version="2") for k, v in HOOK.items()},
    )
    before = world.snapshot()
    result = world.run("upgrade", "--preview")
    assert result.code == 0, result.err
    assert "remove karg  quiet" in result.out
    assert "add karg     splash" in result.out
    assert "keep         /etc/hooked.conf" in result.out
    assert "shadow       /etc/app.conf" in result.out
    assert world.snapshot() == before


def test_enabled_and_masked_units_in_their_state_are_no_drift(world: World) -> None:
    world.publish_os()
    world.publish_bundle(
        "units",
        """
        [bundle]
        name = "units"
        version = "1"
        os-ref = "exampleos/x86_64/stable"

        [[unit]]
        name = "kiosk.service"
        source = "kiosk.service"
        enabled = true

        [[unit]]
        name = "sshd.service"
        enabled = "masked"
        """,
        {"kiosk.service": "[Service]\nExecStart=/usr/bin/true\n[Install]\nWantedBy=multi-user.target\n"},
    )
    assert world.install("units").code == 0
    result = world.run("drift")
    assert result.code == 0, result.out
    (world.etc() / "systemd/system/multi-user.target.wants/kiosk.service").unlink()
    (world.etc() / "systemd/system/sshd.service").unlink()
    result = world.run("drift", "--json")
    assert result.code == 5
    assert {f["subject"] for f in json.loads(result.out)["findings"]} == {"kiosk.service", "sshd.service"}
