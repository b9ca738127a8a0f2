"""Users, groups and fstab lines: declared → present, removed → gone, the admin's own untouched."""

from __future__ import annotations

import pytest

from tests.ostree_trees import debian_tree
from tests.world import World
from tether.accounts import merge_entries

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"
{extra}
"""

USERS = """
[[group]]
name = "kiosk"
gid = 1500

[[user]]
name = "kiosk"
uid = 1500
groups = ["video"]
home = "/var/home/kiosk"
shell = "/bin/sh"
password-hash = "$6$salt$hash"

[[file]]
path = "/etc/kiosk.conf"
content = "owned\\n"
owner = "kiosk"
group = "kiosk"
"""

MOUNT = """
[[mount]]
what = "LABEL=data"
where = "/var/data"
type = "ext4"
options = ["noatime", "nodev"]
"""


def test_merge_entries_by_name() -> None:
    local = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/var/home/alice:/bin/sh\n"
    default = "root:x:0:0::/root:/bin/bash\nsystemd-oom:x:990:990::/:/usr/sbin/nologin\n"
    merged = merge_entries(local, default)
    assert merged.splitlines() == [
        "root:x:0:0::/root:/bin/sh",  # the local entry wins for a name both have
        "alice:x:1000:1000::/var/home/alice:/bin/sh",
        "systemd-oom:x:990:990::/:/usr/sbin/nologin",
    ]
    assert merge_entries(merged, default) == merged


def test_new_os_system_users_survive_a_local_account(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=""))
    assert world.install().code == 0
    with (world.etc() / "passwd").open("a") as passwd:
        passwd.write("alice:x:1000:1000::/var/home/alice:/bin/sh\n")
    passwd_default = (world.root / "os-1/usr/etc/passwd").read_text()
    world.publish_os(
        extra={"usr/etc/passwd": (passwd_default + "newsys:x:990:990::/:/sbin/nologin\n").encode()}
    )
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    result = world.run("upgrade")
    assert result.code == 0, result.err
    names = [line.split(":")[0] for line in (world.etc() / "passwd").read_text().splitlines()]
    assert "alice" in names and "newsys" in names


def test_bundle_accounts_are_declared_through_sysusers(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=USERS))
    result = world.install()
    assert result.code == 0, result.err
    conf = (world.deployment_root() / "usr/lib/sysusers.d/tether-kiosk.conf").read_text()
    assert "g kiosk 1500" in conf and 'u kiosk 1500 "kiosk" /var/home/kiosk /bin/sh' in conf
    assert "m kiosk video" in conf
    owned = world.deployment_root() / "usr/etc/kiosk.conf"
    assert (owned.stat().st_uid, owned.stat().st_gid) == (1500, 1500)


def test_bundle_fstab_lines_come_and_go_and_the_admins_stay(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=MOUNT))
    assert world.install().code == 0
    fstab = world.etc() / "fstab"
    assert "LABEL=data /var/data ext4 noatime,nodev 0 2" in fstab.read_text()
    with fstab.open("a") as f:
        f.write("LABEL=backup /var/backup xfs defaults 0 2\n")
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    result = world.run("upgrade")
    assert result.code == 0, result.err
    text = (world.etc() / "fstab").read_text()
    assert "LABEL=data" not in text and "tether" not in text
    assert "LABEL=backup /var/backup xfs defaults 0 2" in text


def test_a_broken_fstab_is_refused_before_promotion(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=""))
    assert world.install().code == 0
    (world.etc() / "fstab").write_text("this line is not an fstab entry\n")
    before = world.snapshot()
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=MOUNT))
    result = world.run("upgrade")
    assert result.code == 1, result
    assert "fstab does not verify" in result.err
    assert world.snapshot() == before


@pytest.mark.slow
def test_accounts_made_at_deploy_and_disabled_when_dropped(world: World) -> None:
    world.publish_os(tree=debian_tree(dest=world.root / "debian-1"))
    world.publish_bundle("kiosk", BUNDLE.format(version="1", extra=USERS))
    result = world.install()
    assert result.code == 0, result.err
    passwd = (world.etc() / "passwd").read_text()
    assert "kiosk:x:1500:1500:kiosk:/var/home/kiosk:/bin/sh" in passwd
    assert "kiosk:$6$salt$hash:" in (world.etc() / "shadow").read_text()
    assert "video:x:44:kiosk" in (world.etc() / "group").read_text()
    world.publish_os(tree=debian_tree(dest=world.root / "debian-2"))
    world.publish_bundle("kiosk", BUNDLE.format(version="2", extra=""))
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert "Disabled account kiosk" in result.err
    entry = next(
        line for line in (world.etc() / "passwd").read_text().splitlines() if line.startswith("kiosk:")
    )
    assert entry.endswith(":/usr/sbin/nologin") and ":1500:" in entry
    shadow = next(
        line for line in (world.etc() / "shadow").read_text().splitlines() if line.startswith("kiosk:")
    )
    assert shadow.split(":")[1].startswith("!")
