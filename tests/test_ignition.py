"""Ignition spec 3.x as bundle input: the documentation's examples applied day 2, disks refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.world import World, tether, write_bundle

MANIFEST = """
[bundle]
name = "ign"
version = "1"
os-ref = "exampleos/x86_64/stable"
ignition = "config.ign"
"""

# after the examples in Ignition's documentation (files, units with drop-ins, users, kargs)
CONFIG = {
    "ignition": {"version": "3.3.0"},
    "storage": {
        "files": [
            {
                "path": "/etc/example.conf",
                "mode": 420,
                "contents": {"source": "data:,example%20file%0A"},
            },
            {
                "path": "/etc/motd",
                "append": [{"source": "data:;base64,SGVsbG8gZnJvbSBJZ25pdGlvbgo="}],
            },
            {"path": "/etc/from-bundle.conf", "contents": {"source": "files/local.conf"}, "overwrite": True},
        ],
        "directories": [{"path": "/etc/example.d", "mode": 488}],
        "links": [{"path": "/etc/example-link", "target": "/etc/example.conf"}],
    },
    "systemd": {
        "units": [
            {
                "name": "example.service",
                "enabled": True,
                "contents": (
                    "[Service]\nType=oneshot\nExecStart=/usr/bin/true\n\n[Install]\nWantedBy=multi-user.target\n"
                ),
            },
            {
                "name": "sshd.service",
                "dropins": [{"name": "debug.conf", "contents": "[Service]\nEnvironment=D=1\n"}],
            },
            {"name": "multi-user.target", "mask": False},
        ]
    },
    "passwd": {
        "users": [{"name": "core", "uid": 1001, "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3Nza core@example"]}],
        "groups": [{"name": "core", "gid": 1001}],
    },
    "kernelArguments": {"shouldExist": ["console=ttyS0"], "shouldNotExist": ["nosmt"]},
}


def ignition_bundle(directory: Path, config: object) -> Path:
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    return write_bundle(directory, MANIFEST, {"config.ign": text, "files/local.conf": "local\n"})


def test_documentation_example_applied_day_two(world: World) -> None:
    world.publish_os()
    world.publish_bundle(
        "ign", MANIFEST, {"config.ign": json.dumps(CONFIG, indent=2), "files/local.conf": "local\n"}
    )
    result = world.install("ign", "--karg", "root=LABEL=root", "--karg", "nosmt")
    assert result.code == 0, result.err
    etc, root = world.etc(), world.deployment_root()
    assert (etc / "example.conf").read_text() == "example file\n"
    assert (etc / "motd").read_text() == "Tether Test OS 1\nHello from Ignition\n"
    assert (etc / "from-bundle.conf").read_text() == "local\n"
    assert oct((etc / "example.d").stat().st_mode & 0o777) == "0o750"
    assert str((etc / "example-link").readlink()) == "/etc/example.conf"
    assert (root / "usr/lib/systemd/system/example.service").is_file()
    assert (etc / "systemd/system/multi-user.target.wants/example.service").is_symlink()
    assert "Environment=D=1" in (root / "usr/lib/systemd/system/sshd.service.d/debug.conf").read_text()
    assert "u core 1001" in (root / "usr/lib/sysusers.d/tether-ign.conf").read_text()
    assert world.status()[0]["kernel_arguments"] == ["root=LABEL=root", "console=ttyS0"], (
        "nosmt must not exist"
    )
    assert world.run("converge").code == 0
    keys = world.sysroot / "ostree/deploy/exampleos/var/home/core/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAC3Nza core@example\n"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


REFUSED = [
    (
        "storage.disks",
        {"storage": {"disks": [{"device": "/dev/vda", "wipeTable": True}]}},
        '"disks"',
        "needs a disk",
    ),
    (
        "storage.raid",
        {"storage": {"raid": [{"name": "md", "level": "raid1", "devices": []}]}},
        '"raid"',
        "needs a disk",
    ),
    (
        "storage.filesystems",
        {"storage": {"filesystems": [{"device": "/dev/vdb", "format": "ext4"}]}},
        '"filesystems"',
        "needs a disk",
    ),
    (
        "storage.luks",
        {"storage": {"luks": [{"name": "data", "device": "/dev/vdc"}]}},
        '"luks"',
        "needs a disk",
    ),
    (
        "storage.files[0].contents.source",
        {"storage": {"files": [{"path": "/etc/x", "contents": {"source": "https://example.com/x"}}]}},
        '"source"',
        "remote sources",
    ),
    (
        "storage.files[0].contents.source",
        {"storage": {"files": [{"path": "/etc/x", "contents": {"source": "s3://bucket/x"}}]}},
        '"source"',
        "remote",
    ),
    (
        "ignition.config.merge",
        {"ignition": {"version": "3.3.0", "config": {"merge": [{"source": "data:,{}"}]}}},
        '"merge"',
        "merge",
    ),
    (
        "storage.links[0].hard",
        {"storage": {"links": [{"path": "/etc/l", "target": "/etc/x", "hard": True}]}},
        '"hard"',
        "hard links",
    ),
    (
        "storage.files[0].colour",
        {"storage": {"files": [{"path": "/etc/x", "colour": "red"}]}},
        '"colour"',
        "unknown key",
    ),
    ("ignition.version", {"ignition": {"version": "2.2.0"}}, '"version"', "not 3.0.0 to 3.4.0"),
    ("storage.files[0].path", {"storage": {"files": [{"path": "etc/relative"}]}}, '"path"', "absolute"),
]


@pytest.mark.parametrize(
    ("key", "config", "needle", "message"), REFUSED, ids=[r[0] + "-" + r[3] for r in REFUSED]
)
def test_what_cannot_apply_day_two_is_refused_naming_the_key(
    tmp_path: Path, key: str, config: dict[str, object], needle: str, message: str
) -> None:
    document = {"ignition": {"version": "3.3.0"}, **config}
    text = json.dumps(document, indent=2)
    directory = ignition_bundle(tmp_path / "b", text)
    result = tether("bundle", "check", directory)
    assert result.code == 2, result
    assert f"config.ign:{_line_of(text, needle)}:{key}" in result.err
    assert message in result.err
    assert "Traceback" not in result.err


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    directory = ignition_bundle(tmp_path / "b", '{\n  "ignition": {"version": "3.3.0"},\n  oops\n}\n')
    result = tether("bundle", "check", directory)
    assert result.code == 2 and "config.ign:3:" in result.err and "invalid JSON" in result.err


def test_a_path_in_both_manifest_and_ignition_is_refused(tmp_path: Path) -> None:
    directory = ignition_bundle(tmp_path / "b", CONFIG)
    (directory / "tether.toml").write_text(
        MANIFEST + '\n[[file]]\npath = "/etc/example.conf"\ncontent = "x"\n'
    )
    result = tether("bundle", "check", directory)
    assert result.code == 2 and "/etc/example.conf is also declared" in result.err
