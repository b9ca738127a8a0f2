"""The manifest parser under generated input: it returns a bundle or raises ManifestError, nothing else.

Four generators: raw bytes; text; documents shaped like tether.toml (the
schema's tables and keys, with values drawn from edge cases and from anything
TOML can hold); and mutations of the manifest in SPEC.md (spans deleted,
duplicated, overwritten). Every input is written as `tether.toml` in a bundle
directory that has a few source files, and loaded with `load_bundle` as
`bundle check` would; a loaded bundle also goes through `check_supported`.
Besides "no other exception", an error's line must be a line of the file.

CI runs FUZZ_EXAMPLES inputs per generator (1,000, derandomized); with
TETHER_LONG=1 it runs 25,000 per generator (100,000 in all), randomly seeded
(`--hypothesis-seed` reproduces a run).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.bundle.manifest import load_bundle
from tether.errors import ManifestError
from tether.plan.tree import check_supported

LONG = os.environ.get("TETHER_LONG") == "1"
FUZZ_EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "25000" if LONG else "1000"))

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

SPEC_MANIFEST = """\
[bundle]
name = "kiosk"
version = "2026.11.1"
os-ref = "exampleos/x86_64/stable"
os-commits = []

[kernel]
arguments = ["quiet", "console=ttyS0,115200"]

[system]
locale = "es_ES.UTF-8"
keymap = "es"
timezone = "Europe/Madrid"
hostname = "kiosk"

[sysctl]
"vm.swappiness" = "10"

[[file]]
path = "/etc/motd"
content = "Welcome\\n"
mode = "0644"
owner = "root"
group = "root"
policy = "default"

[[file]]
path = "/etc/kiosk/motd"
source = "files/motd"
policy = "enforce"

[[directory]]
path = "/var/lib/kiosk"
mode = "0750"

[[link]]
path = "/etc/kiosk/current"
target = "/usr/share/kiosk/v2"

[[unit]]
name = "kiosk.service"
source = "units/kiosk.service"
enabled = true
dropins = { "10-env.conf" = "units/10-env.conf" }

[swap]
file = "/var/swapfile"
size = "512M"
priority = 10

[[user]]
name = "kiosk"
uid = 1500
groups = ["video"]
home = "/var/home/kiosk"
shell = "/bin/bash"
ssh-authorized-keys = ["ssh-ed25519 AAAA kiosk@example"]

[[group]]
name = "video"
gid = 44

[[mount]]
what = "LABEL=data"
where = "/var/data"
type = "ext4"
options = ["noatime", "nodev"]

[[hook]]
stage = "deploy"
run = "hooks/setup.sh"
timeout = "5m"
network = false

[[ansible]]
playbook = "ansible/site.yml"
stage = "deploy"
extra-vars = { role = "kiosk" }
tags = []
network = false
"""

SOURCES = {
    "files/motd": "Welcome\n",
    "units/kiosk.service": "[Service]\nExecStart=/usr/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    "units/10-env.conf": "[Service]\nEnvironment=A=1\n",
    "hooks/setup.sh": "#!/bin/sh\n",
    "ansible/site.yml": "- hosts: localhost\n",
    "config.ign": '{"ignition": {"version": "3.4.0"}}\n',
}

# The schema's tables: (required keys, other keys).
TABLES = {
    "bundle": (["name", "version", "os-ref"], ["os-commits", "ignition", "max-size"]),
    "kernel": ([], ["arguments"]),
    "system": ([], ["locale", "keymap", "timezone", "hostname"]),
    "sysctl": ([], ["vm.swappiness", "net.ipv4.ip_forward", "kernel/pid_max"]),
    "swap": ([], ["file", "device", "size", "priority"]),
}
ARRAYS = {
    "file": (["path"], ["content", "source", "mode", "owner", "group", "policy"]),
    "directory": (["path"], ["mode", "owner", "group"]),
    "link": (["path", "target"], []),
    "unit": (["name"], ["source", "enabled", "dropins"]),
    "user": (["name"], ["uid", "groups", "home", "shell", "ssh-authorized-keys", "password-hash"]),
    "group": (["name"], ["gid"]),
    "mount": (["what", "where"], ["type", "options"]),
    "hook": (["stage", "run"], ["timeout", "network"]),
    "ansible": (["playbook"], ["stage", "extra-vars", "tags", "network"]),
}
# Values each key accepts, so that generated documents get past their first key.
PLAUSIBLE: dict[str, list[Any]] = {
    "name": ["kiosk", "kiosk.service", "sshd.service", "video", "multi-user.target"],
    "version": ["1", "2026.11.1"],
    "os-ref": ["exampleos/x86_64/stable"],
    "os-commits": [[], ["0" * 64], ["0" * 64, "0" * 64]],
    "ignition": ["config.ign"],
    "max-size": ["1G", "1K"],
    "arguments": [["quiet"], ["quiet", "quiet"], ["console=ttyS0,115200", "nosmt"]],
    "locale": ["es_ES.UTF-8"],
    "keymap": ["es"],
    "timezone": ["Europe/Madrid", "UTC"],
    "hostname": ["kiosk"],
    "vm.swappiness": ["10"],
    "net.ipv4.ip_forward": ["1"],
    "kernel/pid_max": ["4096"],
    "file": ["/var/swapfile"],
    "device": ["LABEL=swap"],
    "size": ["512M"],
    "priority": [10, -1],
    "path": ["/etc/motd", "/etc/kiosk", "/etc/kiosk/a.conf", "/usr/lib/kiosk/x", "/var/lib/kiosk"],
    "content": ["Welcome\n", ""],
    "source": ["files/motd", "units/kiosk.service", "hooks/setup.sh"],
    "mode": ["0644", "0755", "4755", "0600", "1777"],
    "owner": ["root", "0", "1500", "kiosk"],
    "group": ["root", "44", "video"],
    "policy": ["default", "enforce"],
    "target": ["/usr/share/kiosk/v2", "../usr/share"],
    "enabled": [True, False, "masked"],
    "dropins": [{"10-env.conf": "units/10-env.conf"}],
    "uid": [1500, 0, 65534],
    "gid": [44, 1500],
    "groups": [["video"], []],
    "home": ["/var/home/kiosk"],
    "shell": ["/bin/bash"],
    "ssh-authorized-keys": [["ssh-ed25519 AAAA kiosk@example"]],
    "password-hash": ["$6$salt$hash"],
    "what": ["LABEL=data"],
    "where": ["/var/data", "/var/data"],
    "type": ["ext4"],
    "options": [["noatime", "nodev"]],
    "stage": ["deploy", "compose", "boot"],
    "run": ["hooks/setup.sh"],
    "timeout": ["5m", "90s"],
    "network": [True, False],
    "playbook": ["ansible/site.yml"],
    "extra-vars": [{"role": "kiosk"}],
    "tags": [["a"], []],
}
EDGE_STRINGS = [
    "", "/", "//", "/etc", "/etc/motd", "/etc/../etc/shadow", "/var/lib/x", "/usr/bin/x", "/etc/motd/",
    "files/motd", "../files/motd", "/files/motd", "files/../files/motd", "files//motd", "files/nonexistent",
    "hooks/setup.sh", "units/kiosk.service", "units/10-env.conf", "config.ign", "tether.toml", ".", "..",
    "0644", "4755", "7777", "17777", "0o644", "-1", "644", "99999999999999999999", "0x1ff",
    "512M", "1G", "0", "1K", "16E", "99999999999999999999T", "1.5G", "-5M", "M",
    "5m", "90s", "1h", "0s", "-1s", "9999999999999999999999h", "1.5m", "s",
    "deploy", "compose", "boot", "default", "enforce", "masked", "root", "nobody", "65536", "4294967295",
    "kiosk", "kiosk.service", "kiosk@.service", "foo.target", "a" * 300, "é", "\u0000", "\n", "x\ny",
    "exampleos/x86_64/stable", "a" * 64, "0" * 64, "LABEL=data", "UUID=", "ext4", "noatime,nodev",
    "quiet", "console=ttyS0,115200", "ostree=/x", "root=", "$6$salt$hash", "Europe/Madrid", "../zoneinfo",
]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(document: dict[str, Any]) -> str:
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in document.items() if not _is_table(v)]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif _is_table(value):
            for table in value:
                lines.append(f"[[{_toml_key(key)}]]")
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


scalars = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(max_size=40),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(EDGE_STRINGS[:40]) | st.text(max_size=8), scalars, max_size=3),
    st.lists(st.lists(scalars, max_size=2), max_size=2),
)


@st.composite
def _value(draw: st.DrawFn, key: str) -> Any:
    # mostly what the key accepts (so that the keys after it are read too), else anything
    if draw(st.integers(0, 15)) < 14:
        return draw(st.sampled_from(PLAUSIBLE.get(key, EDGE_STRINGS)))
    return draw(values)


def _table(keys: tuple[list[str], list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    required, others = keys
    known = st.fixed_dictionaries(
        {key: _value(key) for key in required}, optional={key: _value(key) for key in others}
    )
    unknown = st.dictionaries(st.text(max_size=12), values, max_size=1)
    return st.builds(lambda a, b: {**b, **a}, known, st.one_of(st.just({}), st.just({}), unknown))


documents = st.fixed_dictionaries(
    {"bundle": _table(TABLES["bundle"])},
    optional={
        **{name: _table(keys) for name, keys in TABLES.items() if name != "bundle"},
        **{name: st.lists(_table(keys), min_size=1, max_size=2) for name, keys in ARRAYS.items()},
    },
)


@st.composite
def mutations(draw: st.DrawFn) -> str:
    text = SPEC_MANIFEST
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 80)))
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "insert"]))
        if action == "delete":
            text = text[:start] + text[end:]
        elif action == "duplicate":
            text = text[:end] + text[start:end] + text[end:]
        else:
            syntax = st.sampled_from(["[", "]", "[[", "=", '"', "\\", "\n", "{", "}"])
            piece = draw(st.text(max_size=20) | syntax)
            text = text[:start] + piece + (text[end:] if action == "replace" else text[start:])
    return text


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("fuzz-bundle")
    for name, content in SOURCES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(content)
    yield directory


COUNTS: dict[str, int] = {}


def check(directory: Path, manifest: bytes, generator: str) -> None:
    COUNTS[generator] = COUNTS.get(generator, 0) + 1
    (directory / "tether.toml").write_bytes(manifest)
    try:
        bundle = load_bundle(directory)
        check_supported(bundle)
    except ManifestError as error:
        last_line = manifest.count(b"\n") + 1
        assert error.line is None or 1 <= error.line <= last_line, f"line {error.line} of {last_line}"
        assert str(error)


def test_valid_manifest_loads(bundle_dir: Path) -> None:
    (bundle_dir / "tether.toml").write_text(SPEC_MANIFEST)
    bundle = load_bundle(bundle_dir)
    assert bundle.info.name == "kiosk" and len(bundle.files) == 2


@FUZZ_SETTINGS
@given(st.binary(max_size=4096))
def test_fuzz_bytes(bundle_dir: Path, data: bytes) -> None:
    check(bundle_dir, data, "bytes")


@FUZZ_SETTINGS
@given(st.text(max_size=4096))
def test_fuzz_text(bundle_dir: Path, text: str) -> None:
    check(bundle_dir, text.encode("utf-8", "surrogatepass"), "text")


@FUZZ_SETTINGS
@given(documents)
def test_fuzz_documents(bundle_dir: Path, document: dict[str, Any]) -> None:
    check(bundle_dir, to_toml(document).encode("utf-8", "surrogatepass"), "documents")


@FUZZ_SETTINGS
@given(mutations())
def test_fuzz_mutations(bundle_dir: Path, text: str) -> None:
    check(bundle_dir, text.encode("utf-8", "surrogatepass"), "mutations")


def test_fuzz_counts() -> None:
    """How many inputs ran (when the generators ran in this session), for RELIABILITY.md."""
    if COUNTS:
        print(f"\nfuzz inputs: {COUNTS} = {sum(COUNTS.values())}")
