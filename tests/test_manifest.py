"""Tests of the bundle manifest parser: the model it builds and the file:line:key of every error."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from tether.bundle.locate import KeyPath, format_key, key_lines, line_of
from tether.bundle.manifest import load_bundle, parse_duration, parse_mode, parse_size, read_source
from tether.bundle.model import (
    ROOT,
    Bundle,
    BundleInfo,
    Directory,
    File,
    FilePolicy,
    Group,
    Hook,
    KernelArguments,
    Link,
    Location,
    Mount,
    Owner,
    Playbook,
    Stage,
    Swap,
    Sysctl,
    SystemSettings,
    Unit,
    UnitState,
    User,
)
from tether.errors import ManifestError, UsageError

HEADER = """\
[bundle]
name = "kiosk"
version = "1"
os-ref = "exampleos/x86_64/stable"
"""

SOURCES = {
    "files/motd": "Welcome\n",
    "units/kiosk.service": "[Service]\nExecStart=/usr/bin/kiosk\n",
    "units/10-env.conf": "[Service]\nEnvironment=A=1\n",
    "hooks/setup.sh": "#!/bin/sh\ntrue\n",
    "ansible/site.yml": "- hosts: all\n",
    "config.ign": '{"ignition": {"version": "3.4.0"}}\n',
}

CHECKSUM = "0123456789abcdef" * 4


def make_bundle(directory: Path, manifest: str | bytes) -> Path:
    for name, content in SOURCES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content)
    data = manifest.encode() if isinstance(manifest, str) else manifest
    (directory / "tether.toml").write_bytes(data)
    return directory


def manifest_error(directory: Path, manifest: str | bytes) -> ManifestError:
    make_bundle(directory, manifest)
    with pytest.raises(ManifestError) as caught:
        load_bundle(directory)
    return caught.value


def assert_located(error: ManifestError, file: Path, line: int | None, key: str | None, message: str) -> None:
    assert (error.file, error.line, error.key) == (file, line, key), str(error)
    assert message in error.message, str(error)
    where = f"{file}" + (f":{line}" if line is not None else "") + (f":{key}" if key else "")
    assert str(error) == f"{where}: {error.message}"


# The example from SPEC.md, with `vm.swappiness` also written as a dotted key
# and a second file read from a source.
FULL = """\
[bundle]
name = "kiosk"
version = "2026.11.1"
os-ref = "exampleos/x86_64/stable"
os-commits = ["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]
ignition = "config.ign"
max-size = "2G"

[kernel]
arguments = ["quiet", "console=ttyS0,115200"]

[system]
locale = "es_ES.UTF-8"
keymap = "es"
timezone = "Europe/Madrid"
hostname = "kiosk"

[sysctl]
"vm.swappiness" = "10"
net.ipv4.ip_forward = "1"

[[file]]
path = "/etc/motd"             # under /etc: tree-level default (/usr/etc)
content = "Welcome\\n"
mode = "0644"
owner = "root"
group = "root"
policy = "default"

[[file]]
path = "/usr/share/kiosk/motd"
source = "files/motd"
mode = "4755"
owner = 1500
group = "video"
policy = "enforce"

[[directory]]
path = "/var/lib/kiosk"
mode = "0750"

[[link]]
path = "/etc/kiosk/current"
target = "/usr/share/kiosk/v2"

[[unit]]
name = "kiosk.service"
source = "units/kiosk.service" # omit to enable/disable/mask a unit the OS ships
enabled = true                 # false: disabled; "masked": masked
dropins = { "10-env.conf" = "units/10-env.conf" }

[[unit]]
name = "getty@tty1.service"
enabled = "masked"

[swap]
file = "/var/swapfile"         # or: device = "LABEL=swap"
size = "512M"
priority = 10

[[user]]
name = "kiosk"
uid = 1500
groups = ["video"]
home = "/var/home/kiosk"
shell = "/bin/bash"
ssh-authorized-keys = ["ssh-ed25519 AAAA... kiosk@example"]
password-hash = "$6$..."       # optional

[[group]]
name = "video"
gid = 44

[[mount]]
what = "LABEL=data"
where = "/var/data"
type = "ext4"
options = ["noatime", "nodev"]

[[hook]]
stage = "compose"
run = "hooks/setup.sh"
timeout = "5m"
network = false

[[hook]]
stage = "boot"
run = "hooks/setup.sh"
network = true

[[ansible]]
playbook = "ansible/site.yml"
stage = "deploy"
extra-vars = { role = "kiosk" }
tags = []
network = false
"""


def test_full_manifest(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, FULL))
    manifest = tmp_path / "tether.toml"

    def at(line: int, key: str) -> Location:
        return Location(manifest, line, key)

    assert bundle == Bundle(
        root=tmp_path.resolve(),
        manifest=manifest,
        info=BundleInfo(
            name="kiosk",
            version="2026.11.1",
            os_ref="exampleos/x86_64/stable",
            os_commits=(CHECKSUM,),
            ignition="config.ign",
            max_size=2 << 30,
            location=at(1, "bundle"),
        ),
        kernel=KernelArguments(("quiet", "console=ttyS0,115200"), at(10, "kernel.arguments")),
        system=SystemSettings(locale="es_ES.UTF-8", keymap="es", timezone="Europe/Madrid", hostname="kiosk"),
        sysctl=(
            Sysctl("vm.swappiness", "10", at(19, 'sysctl."vm.swappiness"')),
            Sysctl("net.ipv4.ip_forward", "1", at(20, "sysctl.net.ipv4.ip_forward")),
        ),
        files=(
            File(
                path=PurePosixPath("/etc/motd"),
                content=b"Welcome\n",
                source=None,
                mode=0o644,
                owner=ROOT,
                group=ROOT,
                policy=FilePolicy.DEFAULT,
                location=at(22, "file[0]"),
            ),
            File(
                path=PurePosixPath("/usr/share/kiosk/motd"),
                content=None,
                source=PurePosixPath("files/motd"),
                mode=0o4755,
                owner=Owner(id=1500),
                group=Owner(name="video"),
                policy=FilePolicy.ENFORCE,
                location=at(30, "file[1]"),
            ),
        ),
        directories=(Directory(PurePosixPath("/var/lib/kiosk"), 0o750, ROOT, ROOT, at(38, "directory[0]")),),
        links=(Link(PurePosixPath("/etc/kiosk/current"), "/usr/share/kiosk/v2", at(42, "link[0]")),),
        units=(
            Unit(
                name="kiosk.service",
                source=PurePosixPath("units/kiosk.service"),
                state=UnitState.ENABLED,
                dropins=(("10-env.conf", PurePosixPath("units/10-env.conf")),),
                location=at(46, "unit[0]"),
            ),
            Unit("getty@tty1.service", None, UnitState.MASKED, (), at(52, "unit[1]")),
        ),
        swap=Swap(PurePosixPath("/var/swapfile"), None, 512 << 20, 10, at(56, "swap")),
        users=(
            User(
                name="kiosk",
                uid=1500,
                groups=("video",),
                home=PurePosixPath("/var/home/kiosk"),
                shell=PurePosixPath("/bin/bash"),
                ssh_authorized_keys=("ssh-ed25519 AAAA... kiosk@example",),
                password_hash="$6$...",
                location=at(61, "user[0]"),
            ),
        ),
        groups=(Group("video", 44, at(70, "group[0]")),),
        mounts=(
            Mount("LABEL=data", PurePosixPath("/var/data"), "ext4", ("noatime", "nodev"), at(74, "mount[0]")),
        ),
        hooks=(
            Hook(Stage.COMPOSE, PurePosixPath("hooks/setup.sh"), 300.0, False, at(80, "hook[0]")),
            Hook(Stage.BOOT, PurePosixPath("hooks/setup.sh"), 600.0, True, at(86, "hook[1]")),
        ),
        playbooks=(
            Playbook(
                playbook=PurePosixPath("ansible/site.yml"),
                stage=Stage.DEPLOY,
                extra_vars=(("role", "kiosk"),),
                tags=(),
                network=False,
                location=at(91, "ansible[0]"),
            ),
        ),
    )
    assert bundle.system.locations == {
        "locale": at(13, "system.locale"),
        "keymap": at(14, "system.keymap"),
        "timezone": at(15, "system.timezone"),
        "hostname": at(16, "system.hostname"),
    }
    assert bundle.hooks_for(Stage.BOOT) == bundle.hooks[1:]
    assert read_source(bundle, PurePosixPath("units/10-env.conf")) == b"[Service]\nEnvironment=A=1\n"


def test_defaults(tmp_path: Path) -> None:
    bundle = load_bundle(
        make_bundle(
            tmp_path,
            HEADER
            + """
[[file]]
path = "/var/lib/kiosk/state"
content = ""
[[directory]]
path = "/etc/kiosk"
[[unit]]
name = "kiosk.service"
source = "units/kiosk.service"
[[mount]]
what = "tmpfs"
where = "/var/tmp/kiosk"
[[hook]]
stage = "deploy"
run = "hooks/setup.sh"
[[ansible]]
playbook = "ansible/site.yml"
""",
        ),
    )
    assert bundle.kernel == KernelArguments()
    assert bundle.swap is None
    (file,) = bundle.files
    assert (file.content, file.mode, file.owner, file.group, file.policy) == (
        b"",
        0o644,
        ROOT,
        ROOT,
        FilePolicy.DEFAULT,
    )
    assert bundle.directories[0].mode == 0o755
    assert bundle.units[0].state is None
    assert bundle.units[0].dropins == ()
    assert (bundle.mounts[0].type, bundle.mounts[0].options) == ("auto", ())
    assert (bundle.hooks[0].timeout, bundle.hooks[0].network) == (600.0, False)
    playbook = bundle.playbooks[0]
    assert (playbook.stage, playbook.extra_vars, playbook.tags, playbook.network) == (
        Stage.DEPLOY,
        (),
        (),
        False,
    )


def test_swap_device_and_inline_tables(tmp_path: Path) -> None:
    manifest = """\
swap = { device = "LABEL=swap", priority = -1 }
file = [
  { path = "/etc/a", content = "a" },
  { path = "/etc/b", content = "b", mode = "0600" },
]
"""
    manifest += (
        HEADER
        + """
[[unit]]
name = "sshd.service"
enabled = false
"""
    )
    bundle = load_bundle(make_bundle(tmp_path, manifest))
    assert bundle.swap == Swap(None, "LABEL=swap", None, -1, Location(tmp_path / "tether.toml", 1, "swap"))
    assert [(f.path.name, f.mode, f.location.line, f.location.key) for f in bundle.files] == [
        ("a", 0o644, 3, "file[0]"),
        ("b", 0o600, 4, "file[1]"),
    ]
    assert bundle.units[0].state is UnitState.DISABLED


def test_bundle_path_given_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bundle(tmp_path / "kiosk", HEADER + "[system]\nhostname = 'bad_name'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError) as caught:
        load_bundle(Path("kiosk"))
    assert str(caught.value).startswith("kiosk/tether.toml:6:system.hostname: invalid hostname 'bad_name'")


# (manifest, line, key, part of the message). Lines count from 1 in the whole
# manifest, so cases that start with HEADER begin at line 5.
ERRORS = [
    pytest.param(HEADER + "[extra]\nx = 1\n", 5, "extra", "unknown table", id="unknown-table"),
    pytest.param(
        HEADER + "nmae = 'x'\n", 5, "bundle.nmae", "unknown key (did you mean 'name'?)", id="unknown-key"
    ),
    pytest.param(
        "[kernel]\narguments = []\n", 1, "bundle", "required table [bundle] is missing", id="no-bundle"
    ),
    pytest.param(
        "# comment\n[bundle]\nname = 'kiosk'\nos-ref = 'a/b'\n",
        2,
        "bundle.version",
        "required key is missing",
        id="missing-key-at-table-header",
    ),
    pytest.param(
        "[bundle]\nname = 'Kiosk'\nversion = '1'\nos-ref = 'a'\n",
        2,
        "bundle.name",
        "invalid bundle name 'Kiosk'",
    ),
    pytest.param(
        "[bundle]\nname = 'kiosk'\nversion = 1\nos-ref = 'a'\n",
        3,
        "bundle.version",
        "expected a string, got integer",
    ),
    pytest.param(
        HEADER + f"os-commits = [\n  '{CHECKSUM}',\n  'abc',\n]\n",
        7,
        "bundle.os-commits[1]",
        "invalid commit checksum 'abc'",
        id="checksum-in-multiline-array",
    ),
    pytest.param(HEADER + "max-size = '1X'\n", 5, "bundle.max-size", "invalid size '1X'"),
    pytest.param(HEADER + "ignition = 'missing.ign'\n", 5, "bundle.ignition", "does not exist"),
    pytest.param(HEADER + "ignition = '/etc/passwd'\n", 5, "bundle.ignition", "must be relative"),
    pytest.param(
        HEADER + "[kernel]\narguments = ['quiet', 'a b']\n", 6, "kernel.arguments[1]", "contains whitespace"
    ),
    pytest.param(
        HEADER
        + "[kernel]\narguments = [\n  'quiet',\n  # ostree is not ours\n  'ostree=/ostree/boot.1',\n]\n",
        9,
        "kernel.arguments[1]",
        "ostree= belongs to ostree",
        id="ostree-karg",
    ),
    pytest.param(
        HEADER + "[kernel]\narguments = 'quiet'\n", 6, "kernel.arguments", "expected an array, got string"
    ),
    pytest.param(HEADER + "[kernel]\nargs = []\n", 6, "kernel.args", "unknown key"),
    pytest.param(HEADER + "[system]\nhostname = '-kiosk'\n", 6, "system.hostname", "invalid hostname"),
    pytest.param(HEADER + "[system]\nhostname = '" + "a" * 65 + "'\n", 6, "system.hostname", "at most 64"),
    pytest.param(
        HEADER + "[system]\ntimezone = '../../etc/passwd'\n", 6, "system.timezone", "invalid timezone"
    ),
    pytest.param(HEADER + "[system]\nlocale = 'es ES'\n", 6, "system.locale", "invalid locale"),
    pytest.param(HEADER + "[system]\nlanguage = 'es'\n", 6, "system.language", "unknown key"),
    pytest.param(
        HEADER + '[sysctl]\n"vm.swappiness" = 10\n',
        6,
        'sysctl."vm.swappiness"',
        "expected a string, got integer",
    ),
    pytest.param(
        HEADER + '[sysctl]\n"vm.swappiness" = "10"\nvm.swappiness = "20"\n',
        7,
        "sysctl.vm.swappiness",
        'sysctl vm.swappiness is already set at sysctl."vm.swappiness" (line 6)',
        id="sysctl-dotted-duplicate",
    ),
    pytest.param(HEADER + '[sysctl]\n"vm/../x" = "1"\n', 6, 'sysctl."vm/../x"', "invalid sysctl key"),
    pytest.param(
        HEADER
        + "[[file]]\npath = '/etc/a'\ncontent = 'a'\n"
        + "[[file]]\npath = '/etc/b'\ncontent = 'b'\n"
        + "[[file]]\npath = '/etc/c'\ncontent = 'c'\nmode = '99x'\n",
        14,
        "file[2].mode",
        "invalid mode '99x'",
        id="mode-in-third-file",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = 'a'\nmode = 644\n", 8, "file[0].mode", "octal string"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = 'a'\nmode = '17777'\n",
        8,
        "file[0].mode",
        "invalid mode",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = 'etc/motd'\ncontent = ''\n", 6, "file[0].path", "is not absolute"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/../root/x'\ncontent = ''\n", 6, "file[0].path", "'..' component"
    ),
    pytest.param(HEADER + "[[file]]\npath = '/etc/./x'\ncontent = ''\n", 6, "file[0].path", "'.' component"),
    pytest.param(HEADER + "[[file]]\npath = '/etc//x'\ncontent = ''\n", 6, "file[0].path", "not normalised"),
    pytest.param(HEADER + "[[file]]\npath = '/etc/x/'\ncontent = ''\n", 6, "file[0].path", "not normalised"),
    pytest.param(HEADER + '[[file]]\npath = "/etc/a\\u0000b"\ncontent = ""\n', 6, "file[0].path", "NUL"),
    pytest.param(
        HEADER + "[[file]]\npath = '/opt/x'\ncontent = ''\n",
        6,
        "file[0].path",
        "not below /etc, /usr or /var",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc'\ncontent = ''\n", 6, "file[0].path", "not below /etc, /usr or /var"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/usr/etc/motd'\ncontent = ''\n",
        6,
        "file[0].path",
        "declare /etc/motd instead",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = 'a'\nsource = 'files/motd'\n",
        8,
        "file[0].source",
        "content and source are exclusive",
    ),
    pytest.param(HEADER + "\n[[file]]\npath = '/etc/a'\n", 6, "file[0]", "a file needs content or source"),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\nsource = '/etc/passwd'\n",
        7,
        "file[0].source",
        "must be relative",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\nsource = '../x'\n", 7, "file[0].source", "'..' component"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\nsource = 'files/none'\n", 7, "file[0].source", "does not exist"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\nsource = 'files'\n", 7, "file[0].source", "is a directory"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\nowner = 'Root!'\n",
        8,
        "file[0].owner",
        "invalid user or group name",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\ngroup = -1\n", 8, "file[0].group", "out of range"
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\npolicy = 'force'\n",
        8,
        "file[0].policy",
        "'default', 'enforce'",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\nmdoe = '0600'\n",
        8,
        "file[0].mdoe",
        "did you mean 'mode'",
    ),
    pytest.param(
        HEADER + "[file]\npath = '/etc/a'\n", 5, "file", "expected an array of tables ([[file]]), got table"
    ),
    pytest.param(
        "file = [\n  { path = '/etc/a', content = 'a' },\n  { path = '/etc/b', bogus = 1 },\n]\n" + HEADER,
        3,
        "file[1].bogus",
        "unknown key",
        id="unknown-key-in-inline-array",
    ),
    pytest.param(
        HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\n[[link]]\npath = '/etc/a'\ntarget = 'b'\n",
        9,
        "link[0].path",
        "/etc/a is already declared at file[0] (line 5)",
        id="duplicate-path",
    ),
    pytest.param(
        HEADER + "[[directory]]\npath = '/etc/a'\n[[file]]\npath = '/etc/a'\ncontent = ''\n",
        8,
        "file[0].path",
        "/etc/a is already declared at directory[0] (line 5)",
        id="duplicate-path-in-file-order",
    ),
    pytest.param(
        HEADER + "[[link]]\npath = '/etc/a'\ntarget = '/x'\n[[file]]\npath = '/etc/a/b'\ncontent = ''\n",
        9,
        "file[0].path",
        "its parent /etc/a is declared as a link at link[0] (line 5)",
        id="path-below-link",
    ),
    pytest.param(HEADER + "[[directory]]\npath = '/'\n", 6, "directory[0].path", "may not be / itself"),
    pytest.param(HEADER + "[[link]]\npath = '/etc/a'\ntarget = ''\n", 7, "link[0].target", "1 to 4095 bytes"),
    pytest.param(
        HEADER + "[[unit]]\nname = 'kiosk'\nenabled = true\n", 6, "unit[0].name", "invalid unit name 'kiosk'"
    ),
    pytest.param(
        HEADER + "[[unit]]\nname = 'a.scope'\nenabled = true\n", 6, "unit[0].name", "invalid unit name"
    ),
    pytest.param(
        HEADER + "[[unit]]\nname = 'a.service'\nenabled = 'yes'\n", 7, "unit[0].enabled", "got 'yes'"
    ),
    pytest.param(
        HEADER + "[[unit]]\nname = 'a.service'\n", 5, "unit[0]", "a unit needs source, enabled or dropins"
    ),
    pytest.param(
        HEADER + "[[unit]]\nname = 'a.service'\n\ndropins = { '10-env' = 'units/10-env.conf' }\n",
        8,
        "unit[0].dropins.10-env",
        "invalid drop-in name '10-env'",
        id="dropin-name",
    ),
    pytest.param(
        HEADER
        + "[[unit]]\nname = 'a.service'\ndropins = { 'a.conf' = 'units/10-env.conf', 'b.conf' = 'x' }\n",
        7,
        'unit[0].dropins."b.conf"',
        "x does not exist",
        id="dropin-source",
    ),
    pytest.param(
        HEADER
        + "[[unit]]\nname = 'a.service'\nenabled = true\n\n[[unit]]\nname = 'a.service'\nenabled = false\n",
        10,
        "unit[1].name",
        "unit a.service is already declared at unit[0] (line 5)",
        id="duplicate-unit",
    ),
    pytest.param(
        HEADER + "[swap]\nfile = '/var/swapfile'\nsize = '1G'\ndevice = 'LABEL=swap'\n",
        8,
        "swap.device",
        "file and device are exclusive",
    ),
    pytest.param(HEADER + "[swap]\nfile = '/var/swapfile'\n", 5, "swap.size", "a swap file needs a size"),
    pytest.param(HEADER + "[swap]\nfile = '/etc/swapfile'\nsize = '1G'\n", 6, "swap.file", "not below /var"),
    pytest.param(HEADER + "[swap]\ndevice = 'sda2'\n", 6, "swap.device", "invalid device"),
    pytest.param(
        HEADER + "[swap]\ndevice = 'LABEL=swap'\npriority = '10'\n",
        7,
        "swap.priority",
        "expected an integer, got string",
    ),
    pytest.param(
        HEADER + "[[swap]]\ndevice = 'LABEL=swap'\n", 5, "swap", "expected a table ([swap]), got array"
    ),
    pytest.param(HEADER + "[[user]]\nname = 'kiosk'\nuid = -1\n", 7, "user[0].uid", "out of range"),
    pytest.param(
        HEADER + "[[user]]\nname = 'kiosk'\ngroups = ['video', 'video']\n",
        7,
        "user[0].groups[1]",
        "listed twice",
    ),
    pytest.param(
        HEADER + "[[user]]\nname = 'kiosk'\npassword-hash = 'a:b'\n", 7, "user[0].password-hash", "':'"
    ),
    pytest.param(
        HEADER + "[[user]]\nname = 'kiosk'\n[[user]]\nname = 'kiosk'\n",
        8,
        "user[1].name",
        "user kiosk is already declared at user[0] (line 5)",
    ),
    pytest.param(
        HEADER + "[[group]]\nname = 'video'\ngid = 44\n[[group]]\nname = 'audio'\ngid = 44\n",
        10,
        "group[1].gid",
        "gid 44 is already declared at group[0] (line 5)",
    ),
    pytest.param(
        HEADER + "[[mount]]\nwhat = 'LABEL=data'\nwhere = 'var/data'\n", 7, "mount[0].where", "not absolute"
    ),
    pytest.param(
        HEADER + "[[mount]]\nwhat = 'LABEL=data'\nwhere = '/var/data'\noptions = ['noatime', 'nodev,ro']\n",
        8,
        "mount[0].options[1]",
        "contains a comma",
    ),
    pytest.param(
        HEADER + "[[mount]]\nwhat = 'a'\nwhere = '/var/data'\n[[mount]]\nwhat = 'b'\nwhere = '/var/data'\n",
        10,
        "mount[1].where",
        "mount point /var/data is already declared at mount[0] (line 5)",
    ),
    pytest.param(
        HEADER + "[[hook]]\nrun = 'hooks/setup.sh'\n", 5, "hook[0].stage", "required key is missing"
    ),
    pytest.param(
        HEADER + "[[hook]]\nstage = 'install'\nrun = 'hooks/setup.sh'\n",
        6,
        "hook[0].stage",
        "invalid value 'install'",
    ),
    pytest.param(
        HEADER + "[[hook]]\nstage = 'boot'\nrun = 'hooks/setup.sh'\ntimeout = '10x'\n",
        8,
        "hook[0].timeout",
        "invalid duration",
    ),
    pytest.param(
        HEADER + "[[hook]]\nstage = 'boot'\nrun = 'hooks/setup.sh'\ntimeout = '0s'\n",
        8,
        "hook[0].timeout",
        "longer than 0s",
    ),
    pytest.param(
        HEADER + "[[hook]]\nstage = 'compose'\nrun = 'hooks/setup.sh'\nnetwork = true\n",
        8,
        "hook[0].network",
        "compose hooks run without network",
    ),
    pytest.param(HEADER + "[[hook]]\nstage = 'boot'\nrun = 'hooks'\n", 7, "hook[0].run", "is a directory"),
    pytest.param(
        HEADER + "[[ansible]]\nplaybook = 'ansible/site.yml'\nstage = 'compose'\n",
        7,
        "ansible[0].stage",
        "deploy or boot, not compose",
    ),
    pytest.param(
        HEADER + "[[ansible]]\nplaybook = 'ansible/site.yml'\n[ansible.extra-vars]\nrole = 1\n",
        8,
        "ansible[0].extra-vars.role",
        "expected a string, got integer",
        id="extra-vars-header-on-array",
    ),
    pytest.param(
        HEADER + "[[ansible]]\nplaybook = 'ansible/site.yml'\nextra-vars = { 'bad-name' = 'x' }\n",
        7,
        "ansible[0].extra-vars.bad-name",
        "invalid variable name",
    ),
    pytest.param(
        HEADER + "[[ansible]]\nplaybook = 'ansible/site.yml'\nnetwork = 'no'\n",
        7,
        "ansible[0].network",
        "expected true or false",
    ),
    pytest.param(
        HEADER
        + "[[file]]\npath = '/etc/a'\n"
        + 'content = """\n[[file]]\nmode = "0600"\n"""\n'
        + "# mode = 'not here'\nmode = 'x'\n",
        12,
        "file[0].mode",
        "invalid mode 'x'",
        id="lookalikes-in-strings-and-comments",
    ),
]


@pytest.mark.parametrize(("manifest", "line", "key", "message"), ERRORS)
def test_errors(tmp_path: Path, manifest: str, line: int, key: str, message: str) -> None:
    error = manifest_error(tmp_path, manifest)
    assert_located(error, tmp_path / "tether.toml", line, key, message)
    assert isinstance(error, UsageError)
    assert error.exit_code == 2


def test_crlf_line_endings(tmp_path: Path) -> None:
    manifest = (HEADER + "[[file]]\npath = '/etc/a'\ncontent = ''\nmode = 'rw'\n").replace("\n", "\r\n")
    error = manifest_error(tmp_path, manifest)
    assert_located(error, tmp_path / "tether.toml", 8, "file[0].mode", "invalid mode 'rw'")


def test_toml_syntax_error(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, HEADER + "[kernel]\narguments = ['quiet' 'splash']\n[system]\n")
    assert_located(error, tmp_path / "tether.toml", 6, None, "invalid TOML: ")
    assert error.message.endswith("(column 22)")


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, HEADER + "[kernel]\narguments = ['quiet',\n\n")
    assert_located(error, tmp_path / "tether.toml", 6, None, "(at end of file)")


def test_toml_duplicate_key(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, HEADER + "name = 'again'\n")
    assert_located(error, tmp_path / "tether.toml", 5, None, "invalid TOML: cannot overwrite a value")


def test_binary_garbage(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, HEADER.encode() + b"\x00\xff\xfe\x80garbage\n")
    assert_located(error, tmp_path / "tether.toml", 5, None, "not UTF-8 text (byte 0xff)")


def test_nul_byte(tmp_path: Path) -> None:
    error = manifest_error(tmp_path, HEADER.encode() + b"x = '\x00'\n")
    assert_located(error, tmp_path / "tether.toml", 5, None, "invalid TOML: ")


DEEP_SYSCTL_KEY = ".".join(["a"] * 5000)


@pytest.mark.parametrize(
    ("manifest", "line", "key", "message"),
    [
        ("a = " + "[" * 10000, None, None, "invalid TOML: values are nested too deeply"),
        ("a = " + "{b = " * 5000, None, None, "invalid TOML: values are nested too deeply"),
        (HEADER + "a = " + "[" * 300 + "]" * 300, 5, "bundle.a", "unknown key"),
        (
            HEADER + f"[sysctl]\n{DEEP_SYSCTL_KEY} = '1'\n",
            6,
            f"sysctl.{DEEP_SYSCTL_KEY}",
            "invalid sysctl key",
        ),
    ],
)
def test_deep_nesting(tmp_path: Path, manifest: str, line: int | None, key: str | None, message: str) -> None:
    error = manifest_error(tmp_path, manifest)
    assert_located(error, tmp_path / "tether.toml", line, key, message)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"tether\.toml: does not exist"):
        load_bundle(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is not a directory"):
        load_bundle(tmp_path / "nothing")


def test_source_symlink_escaping_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "secret").write_text("secret")
    (bundle / "files").mkdir()
    (bundle / "files" / "motd").symlink_to(tmp_path / "secret")
    error = manifest_error(bundle, HEADER + "[[file]]\npath = '/etc/motd'\nsource = 'files/motd'\n")
    assert_located(
        error, bundle / "tether.toml", 7, "file[0].source", "files/motd resolves outside the bundle directory"
    )


def test_source_symlink_inside_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER + "[[file]]\npath = '/etc/motd'\nsource = 'motd'\n")
    (tmp_path / "motd").symlink_to("files/motd")
    bundle = load_bundle(tmp_path)
    assert read_source(bundle, PurePosixPath("motd")) == b"Welcome\n"


def test_unused_symlink_escaping_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER)
    (tmp_path / "files" / "passwd").symlink_to("../../../../../etc/passwd")
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert_located(
        caught.value, tmp_path.resolve() / "files" / "passwd", None, None, "symlink points outside"
    )


def test_symlinked_manifest_escaping_bundle(tmp_path: Path) -> None:
    (tmp_path / "outside.toml").write_text(HEADER)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "tether.toml").symlink_to(tmp_path / "outside.toml")
    with pytest.raises(ManifestError, match="resolves outside the bundle directory"):
        load_bundle(tmp_path / "bundle")


def test_fifo_in_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER)
    os.mkfifo(tmp_path / "files" / "pipe")
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert_located(
        caught.value, tmp_path.resolve() / "files" / "pipe", None, None, "bundles may not contain a fifo"
    )


def test_fifo_as_source(tmp_path: Path) -> None:
    make_bundle(tmp_path, "")
    os.mkfifo(tmp_path / "files" / "pipe")
    error = manifest_error(tmp_path, HEADER + "[[file]]\npath = '/etc/a'\nsource = 'files/pipe'\n")
    assert_located(
        error, tmp_path / "tether.toml", 7, "file[0].source", "files/pipe is a fifo, not a regular file"
    )


def test_read_source_does_not_block_on_fifo(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path, HEADER))
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ManifestError, match="is a fifo"):
        read_source(bundle, PurePosixPath("pipe"))


@pytest.mark.parametrize("source", ["../secret", "/etc/passwd", "link"])
def test_read_source_confined(tmp_path: Path, source: str) -> None:
    (tmp_path / "secret").write_text("secret")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    bundle = load_bundle(make_bundle(bundle_dir, HEADER))
    (bundle_dir / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ManifestError):
        read_source(bundle, PurePosixPath(source))


def test_source_too_big(tmp_path: Path) -> None:
    make_bundle(tmp_path, "")
    with open(tmp_path / "files" / "big", "wb") as big:
        big.truncate(65 << 20)
    error = manifest_error(tmp_path, HEADER + "[[file]]\npath = '/etc/a'\nsource = 'files/big'\n")
    assert_located(error, tmp_path / "tether.toml", 7, "file[0].source", "files/big is larger than 64 MiB")


def test_unused_file_too_big(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER)
    os.truncate(tmp_path / "files" / "motd", 65 << 20)
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert_located(caught.value, tmp_path.resolve() / "files" / "motd", None, None, "larger than 64 MiB")


def test_bundle_size_limit(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER)
    for index in range(17):  # 17 x 64 MiB > 1 GiB, sparse so nothing is written
        with open(tmp_path / f"part{index}", "wb") as part:
            part.truncate(64 << 20)
    with pytest.raises(ManifestError) as caught:
        load_bundle(tmp_path)
    assert_located(
        caught.value, tmp_path.resolve(), None, None, "bundle is larger than 1G (raise bundle.max-size)"
    )
    (tmp_path / "tether.toml").write_text(HEADER + "max-size = '2G'\n")
    assert load_bundle(tmp_path).info.max_size == 2 << 30


def test_bundle_max_size_lowers_limit(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER + "max-size = '1K'\n")
    (tmp_path / "files" / "motd").write_bytes(b"x" * 2048)
    with pytest.raises(ManifestError, match="bundle is larger than 1K"):
        load_bundle(tmp_path)


def test_setuid_file_in_bundle(tmp_path: Path) -> None:
    make_bundle(tmp_path, HEADER)
    os.chmod(tmp_path / "hooks" / "setup.sh", 0o4755)
    with pytest.raises(ManifestError, match="setuid or setgid"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("1K", 1024), ("512M", 512 << 20), ("2G", 2 << 30), ("1T", 1 << 40)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1k", "1 M", "1MiB", "-1", "1.5G", "M", "١٢"])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("0s", 0.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "5 m", "1d", "1.5h", "m"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "mode"), [("0644", 0o644), ("644", 0o644), ("0755", 0o755), ("4755", 0o4755), ("07777", 0o7777)]
)
def test_parse_mode(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "99x", "0o644", "0888", "17777", "64", "rw-r--r--"])
def test_parse_mode_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid mode"):
        parse_mode(text)


TRICKY = """\
# [[file]] in a comment
title = "a [b] = c"     # comment with "quotes"
'literal key' = 'x'
"quoted.key" = { inner = [1, 2, { deep = "d" }], other = '''
multi
line''' }
dotted.key.here = 1
multi = \"\"\"
[[file]]
path = "not a key"
\\\"\"\"\"\"\"
[[file]]
path = "/etc/a"
[file.sub]
x = 1
[[file]]
  [[file.part]]
  y = 2
  [[file.part]]
  y = 3
[ "spaced" . header ]
a = [
  [1, 2],
  [3],
]
"""


def test_key_lines() -> None:
    lines = key_lines(TRICKY)
    expected: dict[KeyPath, int] = {
        ("title",): 2,
        ("literal key",): 3,
        ("quoted.key",): 4,
        ("quoted.key", "inner", 2, "deep"): 4,
        ("quoted.key", "other"): 4,
        ("dotted", "key", "here"): 7,
        ("multi",): 8,
        ("file", 0): 12,
        ("file", 0, "path"): 13,
        ("file", 0, "sub"): 14,
        ("file", 0, "sub", "x"): 15,
        ("file", 1): 16,
        ("file", 1, "part", 0): 17,
        ("file", 1, "part", 0, "y"): 18,
        ("file", 1, "part", 1, "y"): 20,
        ("spaced", "header"): 21,
        ("spaced", "header", "a", 1): 24,
        ("spaced", "header", "a", 1, 0): 24,
    }
    assert {path: lines.get(path) for path in expected} == expected


def _paths(value: object, path: KeyPath = ()) -> list[KeyPath]:
    children: list[tuple[str | int, object]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    return [path] + [sub for key, child in children for sub in _paths(child, (*path, key))]


@pytest.mark.parametrize("text", [TRICKY, FULL])
def test_key_lines_finds_every_key(text: str) -> None:
    lines = key_lines(text)
    missing = [path for path in _paths(tomllib.loads(text))[1:] if path not in lines]
    assert missing == []


def test_line_of_falls_back_to_enclosing_table() -> None:
    lines = key_lines(HEADER + "[[file]]\npath = '/etc/a'\n")
    assert line_of(lines, ("file", 0, "mode")) == 5
    assert line_of(lines, ("file", 3, "mode")) == 5
    assert line_of(lines, ("swap", "size")) == 1


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("file", 2, "mode"), "file[2].mode"),
        (("sysctl", "vm.swappiness"), 'sysctl."vm.swappiness"'),
        (("unit", 0, "dropins", "10-env.conf"), 'unit[0].dropins."10-env.conf"'),
        (("ansible", 0, "extra-vars", 'a "b"'), 'ansible[0].extra-vars."a \\"b\\""'),
        (("kernel", "arguments", 1), "kernel.arguments[1]"),
    ],
)
def test_format_key(path: KeyPath, text: str) -> None:
    assert format_key(path) == text
