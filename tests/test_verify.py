"""OS commits pulled by checksum: ref binding and downgrades (SPEC, Safety; exit 4).

When the OS ref's head is not among the commits a bundle is bound to, tether
pulls the newest bound commit by its checksum, so libostree's own ref-binding
check does not apply: tether refuses a commit whose `ostree.ref-binding` does
not name the OS ref, and one older than the deployed OS commit unless
`--allow-downgrade`.
"""

from __future__ import annotations

import subprocess

from tests.ostree_trees import commit_tree, synthetic_tree
from tests.world import OS_REF, World, add_busybox

BUNDLE = """
[bundle]
name = "kiosk"
version = "{version}"
os-ref = "exampleos/x86_64/stable"
"""


def _commit_for_another_ref(world: World, ref: str, *, ref_binding: bool = True) -> str:
    """A valid OS commit, newer than all others, made for `ref`."""
    tree = add_busybox(synthetic_tree(world.root / f"os-{ref.replace('/', '-')}-{ref_binding}", version="9"))
    checksum = commit_tree(
        world.repo, tree, ref, version="9", timestamp=1_800_000_000, ref_binding=ref_binding
    )
    subprocess.run(["ostree", f"--repo={world.repo}", "summary", "-u"], check=True)
    return checksum


def test_os_commit_bound_to_another_ref_is_refused(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"))
    assert world.install().code == 0
    before = world.snapshot()
    foreign = _commit_for_another_ref(world, "exampleos/x86_64/testing")
    world.publish_bundle("kiosk", BUNDLE.format(version="2"), bind=[foreign])
    for argv in (("upgrade",), ("upgrade", "--check"), ("upgrade", "--allow-downgrade")):
        result = world.run(*argv)
        assert result.code == 4, (argv, result)
        assert "ref-binding" in result.err and "exampleos/x86_64/testing" in result.err
        assert "Traceback" not in result.err
        assert world.snapshot() == before


def test_os_commit_without_ref_binding_is_accepted(world: World) -> None:
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"))
    assert world.install().code == 0
    unbound = _commit_for_another_ref(world, "exampleos/x86_64/other", ref_binding=False)
    world.publish_bundle("kiosk", BUNDLE.format(version="2"), bind=[unbound])
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert world.status()[0]["os_commit"] == unbound


def test_os_commit_bound_to_the_os_ref_by_checksum_is_accepted(world: World) -> None:
    os1 = world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"), bind=[os1])
    assert world.install().code == 0
    os2 = world.publish_os()
    world.publish_os()  # the ref moves past os2: os2 is pulled by checksum
    world.publish_bundle("kiosk", BUNDLE.format(version="2"), bind=[os2])
    result = world.run("upgrade")
    assert result.code == 0, result.err
    assert world.status()[0]["os_commit"] == os2


def test_downgrade_is_refused_unless_allowed(world: World) -> None:
    os1 = world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"), bind=[os1])
    assert world.install().code == 0
    os2 = world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="2"), bind=[os2])
    assert world.run("upgrade").code == 0
    before = world.snapshot()
    # the vendor rebinds the product to the older OS commit
    world.publish_bundle("kiosk", BUNDLE.format(version="3"), bind=[os1])
    for argv in (("upgrade",), ("upgrade", "--check")):
        result = world.run(*argv)
        assert result.code == 4, (argv, result)
        assert "older than the deployed" in result.err and "--allow-downgrade" in result.err
        assert "Traceback" not in result.err
        assert world.snapshot() == before
    switch = world.run("switch", "exampleos:exampleos/x86_64/kiosk")
    assert switch.code == 4, switch
    assert world.snapshot() == before
    result = world.run("upgrade", "--allow-downgrade")
    assert result.code == 0, result.err
    [new, old] = world.status()
    assert new["os_commit"] == os1 and new["bundle"]["version"] == "3"
    assert old["os_commit"] == os2


def test_os_ref_head_pulled_by_ref_is_checked_by_libostree(world: World) -> None:
    """The OS ref's head is pulled by ref: libostree checks its binding; a matching one passes."""
    world.publish_os()
    world.publish_bundle("kiosk", BUNDLE.format(version="1"))
    assert world.install().code == 0
    metadata = world.status()[0]
    assert metadata["bundle"]["bound_to"] == [metadata["os_commit"]]
    assert OS_REF in subprocess.run(
        ["ostree", f"--repo={world.repo}", "show", "--print-metadata-key=ostree.ref-binding", OS_REF],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
