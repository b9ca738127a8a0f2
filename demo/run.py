"""A newcomer's tour of tether: a vendor ships an OS and product bundles, a machine follows them.

Everything is built from scratch under demo/work/ on every run: an OS tree, an ostree
repository, two bundles, an nginx serving the repository on 127.0.0.1 and a sysroot
directory standing in for a machine's disk. Every tether command runs as its own process
through the real command line, exactly as printed. Run it with `make demo` (as root).
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.http import serve_directory  # noqa: E402
from tests.ostree_trees import synthetic_tree  # noqa: E402
from tests.world import add_busybox  # noqa: E402

TETHER = Path(sys.executable).parent / "tether"

# Paths are shown and passed relative to the repository root, where every command runs.
WORK = Path("demo/work")
VENDOR = WORK / "vendor"
REPO = WORK / "repo"
BUNDLES = WORK / "bundles"
SYSROOT = WORK / "sysroot"

OS_REF = "exampleos/x86_64/stable"
KIOSK_REF = "exampleos/x86_64/kiosk"
SIGNAGE_REF = "exampleos/x86_64/signage"
STATEROOT = "exampleos"
REMOTE = "exampleos"

KIOSK_UNIT = """\
[Unit]
Description=The kiosk browser

[Service]
ExecStart=/usr/bin/true

[Install]
WantedBy=multi-user.target
"""

KIOSK_HOOK = """\
#!/bin/sh
# A deploy hook: runs in a sandbox inside the new deployment, with its /etc writable.
mkdir -p /etc/kiosk
echo "kiosk {version} set up by its deploy hook" > /etc/kiosk/setup-done
"""


class DemoFailed(Exception):
    """A step did not do what the tour says it does."""


# --- printing ------------------------------------------------------------------------------------


def heading(title: str) -> None:
    print()
    print("=" * 100)
    print(title)
    print("=" * 100)


def say(text: str) -> None:
    """One or two sentences for the reader, wrapped."""
    print()
    print(textwrap.fill(" ".join(text.split()), width=100))


def indented(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"    {line}" if line else "")


def show_file(label: str, path: Path) -> None:
    """A file (or symlink) of the machine, as `label` (its path as the machine sees it)."""
    print(f"  {label}:")
    if path.is_symlink():
        indented(f"-> {os.readlink(path)}")
    elif path.exists():
        indented(path.read_text() or "(empty)")
    else:
        indented("(does not exist)")


# --- running commands ----------------------------------------------------------------------------


def run(argv: list[str], *, codes: tuple[int, ...] = (0,)) -> str:
    """Show a command, run it from the repository root, show its output indented; return the output."""
    shown = ["tether", *argv[1:]] if argv[0] == str(TETHER) else argv
    print()
    print(f"$ {shlex.join(shown)}")
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    indented(proc.stdout)
    if proc.returncode not in codes:
        raise DemoFailed(f"`{shlex.join(shown)}` exited with code {proc.returncode}")
    if proc.returncode != 0:
        print(f"    (exit code {proc.returncode})")
    return proc.stdout


def tether(*args: str, codes: tuple[int, ...] = (0,)) -> str:
    return run([str(TETHER), *args], codes=codes)


def quiet(argv: list[str]) -> str:
    """Run a helper command without showing it (used to look things up)."""
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DemoFailed(f"`{shlex.join(argv)}` exited with code {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(f"expected {what}")


# --- looking at the machine ----------------------------------------------------------------------


def deployments() -> list[dict[str, Any]]:
    out = quiet([str(TETHER), "status", "--json", "--sysroot", str(SYSROOT)])
    found: list[dict[str, Any]] = json.loads(out)["deployments"]
    return found


def default_deployment() -> Path:
    """The directory of the default deployment: the machine's / after its next boot."""
    d = deployments()[0]
    deploy: Path = REPO_ROOT / SYSROOT / "ostree/deploy" / str(d["stateroot"]) / "deploy"
    return deploy / f"{d['checksum']}.{d['serial']}"


def boot_entries() -> list[Path]:
    return sorted((REPO_ROOT / SYSROOT / "boot/loader/entries").glob("*.conf"))


# --- the vendor's side ---------------------------------------------------------------------------


def os_identity(version: str) -> dict[str, bytes]:
    """The OS's name and its default message of the day."""
    release = f'NAME="ExampleOS"\nID=exampleos\nVERSION_ID={version}\nPRETTY_NAME="ExampleOS {version}"\n'
    return {
        "usr/lib/os-release": release.encode(),
        "usr/etc/os-release": release.encode(),
        "usr/etc/motd": f"ExampleOS {version}\n".encode(),
    }


def publish_os(version: str) -> str:
    """Build OS tree `version`, commit it to the OS ref and update the summary; return the commit."""
    tree = VENDOR / f"os-{version}"
    add_busybox(synthetic_tree(REPO_ROOT / tree, version=version, extra=os_identity(version)))
    out = run(
        [
            "ostree", f"--repo={REPO}", "commit", f"--branch={OS_REF}", f"--tree=dir={tree}",
            f"--subject=ExampleOS {version}", f"--add-metadata-string=version={version}", "--no-xattrs",
        ]
    )
    run(["ostree", f"--repo={REPO}", "summary", "-u"])
    return out.split()[-1]


def kiosk_manifest(version: str, karg: str, motd: bool) -> str:
    manifest = f"""\
        [bundle]
        name = "kiosk"
        version = "{version}"
        os-ref = "{OS_REF}"

        [kernel]
        arguments = ["{karg}"]

        [system]
        hostname = "kiosk"
        timezone = "Europe/Madrid"
        """
    if motd:
        manifest += """
        [[file]]
        path = "/etc/motd"
        source = "files/motd"
        """
    manifest += """
        [[unit]]
        name = "kiosk.service"
        source = "units/kiosk.service"
        enabled = true

        [[hook]]
        stage = "deploy"
        run = "hooks/setup.sh"
        """
    return textwrap.dedent(manifest)


def write_kiosk(version: str, karg: str, motd: bool) -> Path:
    directory = BUNDLES / "kiosk"
    root = REPO_ROOT / directory
    (root / "units").mkdir(parents=True, exist_ok=True)
    (root / "hooks").mkdir(exist_ok=True)
    (root / "tether.toml").write_text(kiosk_manifest(version, karg, motd))
    (root / "units/kiosk.service").write_text(KIOSK_UNIT)
    (root / "hooks/setup.sh").write_text(KIOSK_HOOK.format(version=version))
    (root / "hooks/setup.sh").chmod(0o755)
    if motd:
        (root / "files").mkdir(exist_ok=True)
        (root / "files/motd").write_text("Welcome to the ExampleOS kiosk. Touch the screen to begin.\n")
    elif (root / "files").exists():
        shutil.rmtree(root / "files")
    return directory


def write_signage() -> Path:
    directory = BUNDLES / "signage"
    root = REPO_ROOT / directory
    root.mkdir(parents=True, exist_ok=True)
    (root / "tether.toml").write_text(
        textwrap.dedent(
            f"""\
            [bundle]
            name = "signage"
            version = "1"
            os-ref = "{OS_REF}"

            [system]
            hostname = "signage"

            [[file]]
            path = "/etc/motd"
            content = "ExampleOS digital signage: this screen shows the lobby schedule.\\n"
            """
        )
    )
    return directory


def build_bundle(directory: Path, ref: str) -> None:
    tether("bundle", "check", str(directory))
    tether("bundle", "build", str(directory), "--repo", str(REPO), "--ref", ref, "--bind-ref", OS_REF)


# --- the acts ------------------------------------------------------------------------------------


def start_from_scratch() -> None:
    """Remove demo/work; deployment directories are immutable (chattr +i) and need clearing first."""
    work = REPO_ROOT / WORK
    if not work.exists():
        return
    for directory in work.glob("sysroot/ostree/deploy/*/deploy/*"):
        if directory.is_dir() and not directory.is_symlink():
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    shutil.rmtree(work)


def act_1_vendor_builds() -> None:
    heading("Act 1. The vendor builds an OS and two product bundles")
    say(
        f"""ExampleOS is an ostree-based OS. Its vendor builds the OS tree once and commits it to an
        ostree repository under the ref {OS_REF}; publishing also updates the repository's summary,
        which is what machines read to find the refs."""
    )
    (REPO_ROOT / VENDOR).mkdir(parents=True)
    run(["ostree", f"--repo={REPO}", "init", "--mode=archive"])
    publish_os("1")
    say(
        """The vendor sells the same OS as two products, a kiosk and a digital signage screen. What
        makes each product is a bundle: a directory with a tether.toml. Here is the kiosk's:"""
    )
    kiosk = write_kiosk("1", "quiet", motd=True)
    print()
    indented((REPO_ROOT / kiosk / "tether.toml").read_text())
    signage = write_signage()
    say(
        """Each bundle is checked, then built: committed to the same repository under a ref of its own
        and bound to the OS commit it was tested with (--bind-ref: the commit the OS ref points to
        now)."""
    )
    build_bundle(kiosk, KIOSK_REF)
    build_bundle(signage, SIGNAGE_REF)
    tether("bundle", "list", "--repo", str(REPO))
    say(
        """The repository now holds one OS commit and two bundles bound to it. A bundle is never applied
        to an OS commit it is not bound to, so a machine can only get pairs the vendor tested."""
    )


def act_2_publish(url: str) -> None:
    heading("Act 2. The vendor publishes the repository over HTTP")
    say(f"""An nginx on 127.0.0.1 serves {REPO} as plain static files at {url}. Its config file,
        fetched over HTTP:""")
    print()
    print(f"GET {url}/config")
    with urllib.request.urlopen(f"{url}/config", timeout=10) as response:
        indented(response.read().decode())
    say("""ostree needs nothing more than a static web server: machines pull commits and bundles from it.""")


def act_3_install(url: str) -> None:
    heading("Act 3. The operator installs a kiosk")
    say(
        f"""{SYSROOT} stands in for a new machine's disk. tether install adds the remote, pulls the kiosk
        bundle and the OS commit it is bound to, composes them into one commit, deploys it, runs the
        bundle's deploy hook and makes the result the default. root=LABEL=root is the machine's own
        kernel argument, not the bundle's."""
    )
    tether(
        "install", "--sysroot", str(SYSROOT), "--stateroot", STATEROOT, "--remote", f"{REMOTE}={url}",
        "--no-gpg-verify", "--bundle", f"{REMOTE}:{KIOSK_REF}", "--karg", "root=LABEL=root",
    )
    tether("status", "--sysroot", str(SYSROOT))
    deployment = default_deployment()
    say(
        f"""One deployment, made of OS 1 and kiosk 1. Its files are under
        {deployment.relative_to(REPO_ROOT).parent}/<checksum>.<serial>, shown below as the machine will
        see them after booting it:"""
    )
    print()
    etc = deployment / "etc"
    show_file("/etc/motd", etc / "motd")
    show_file("/etc/hostname", etc / "hostname")
    show_file("/etc/localtime", etc / "localtime")
    show_file("/etc/systemd/system/multi-user.target.wants/kiosk.service",
              etc / "systemd/system/multi-user.target.wants/kiosk.service")
    show_file("/etc/kiosk/setup-done (written by the deploy hook)", etc / "kiosk/setup-done")
    [entry] = boot_entries()
    show_file(f"/boot/loader/entries/{entry.name} (the boot loader entry)", entry)
    expect((etc / "hostname").read_text() == "kiosk\n", "hostname kiosk after install")
    expect((etc / "kiosk/setup-done").exists(), "the deploy hook's file after install")
    expect("quiet" in entry.read_text(), "the karg quiet in the boot loader entry")
    say(
        """Everything the installer would have written once and forgotten (message of the day, hostname,
        timezone, an enabled service, kernel arguments) came from the bundle, and tether remembers it."""
    )


def act_4_admin_edits() -> None:
    heading("Act 4. The machine's admin adds a file of their own")
    note = default_deployment() / "etc/admin-note"
    note.write_text("Ticket 4711: screen replaced on 2026-03-02.\n")
    say("""The admin writes /etc/admin-note on the running machine (here: straight into the deployment's
        /etc). tether did not make this file, and must never lose it.""")
    print()
    show_file("/etc/admin-note", note)


def act_5_release_2() -> None:
    heading("Act 5. The vendor releases OS 2 and kiosk 2")
    say("""The vendor builds OS 2 and commits it to the same OS ref.""")
    publish_os("2")
    say(
        """Kiosk 2 drops the custom motd and replaces the kernel argument quiet with splash. The
        bundle's changes:"""
    )
    old = (REPO_ROOT / BUNDLES / "kiosk/tether.toml").read_text()
    kiosk = write_kiosk("2", "splash", motd=False)
    new = (REPO_ROOT / kiosk / "tether.toml").read_text()
    print()
    indented("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "kiosk 1", "kiosk 2")))
    build_bundle(kiosk, KIOSK_REF)
    say("""On the machine, the operator first asks what an upgrade would do; --check only pulls metadata.""")
    tether("upgrade", "--check", "--sysroot", str(SYSROOT))
    tether("upgrade", "--sysroot", str(SYSROOT))
    tether("status", "--sysroot", str(SYSROOT))
    etc = default_deployment() / "etc"
    print()
    show_file("/etc/motd", etc / "motd")
    show_file("/etc/admin-note", etc / "admin-note")
    show_file("/etc/kiosk/setup-done", etc / "kiosk/setup-done")
    expect((etc / "motd").read_text() == "ExampleOS 2\n", "the OS 2 default motd after the upgrade")
    expect((etc / "admin-note").exists(), "the admin's note to survive the upgrade")
    kargs = deployments()[0]["kernel_arguments"]
    expect(kargs == ["root=LABEL=root", "splash"], f"kargs root=LABEL=root splash, got {kargs}")
    say(
        """OS 2 + kiosk 2 is now the default and OS 1 + kiosk 1 stays as the rollback. The motd line
        removed from the bundle left no trace (the OS's own default is back), quiet became splash
        while the machine's root= stayed, and the admin's own file was carried over: that is the
        drift rule."""
    )


def act_6_os_ahead() -> None:
    heading("Act 6. The vendor releases OS 3, but no bundle is bound to it yet")
    say("""OS 3 is committed to the OS ref; the kiosk bundle is not rebuilt, so it stays bound to OS 2.""")
    publish_os("3")
    before = deployments()
    tether("upgrade", "--sysroot", str(SYSROOT))
    expect(deployments() == before, "no change when the OS is ahead of its bundle")
    say(
        """The OS ref moved to OS 3, but kiosk 2 was only tested with OS 2. tether stays on the current
        pair and says so: a machine never runs an OS commit its bundle was not bound to."""
    )


def act_7_rollback_and_switch() -> None:
    heading("Act 7. Rollback, switching product, cleanup")
    tether("rollback", "--sysroot", str(SYSROOT))
    tether("status", "--sysroot", str(SYSROOT))
    expect(deployments()[0]["bundle"]["version"] == "1", "kiosk 1 as the default after rollback")
    say(
        """The previous pair, OS 1 + kiosk 1, is the default again: its deployment was kept whole, /etc
        and kernel arguments included, so going back is just reordering the boot list."""
    )
    say(
        """The operator now turns this machine into a signage screen. The signage bundle is bound to
        OS 1 only, so tether takes OS 1 with it."""
    )
    tether("switch", f"{REMOTE}:{SIGNAGE_REF}", "--sysroot", str(SYSROOT))
    tether("status", "--sysroot", str(SYSROOT))
    etc = default_deployment() / "etc"
    print()
    show_file("/etc/motd", etc / "motd")
    show_file("/etc/hostname", etc / "hostname")
    show_file("/etc/localtime", etc / "localtime")
    show_file("/etc/systemd/system/multi-user.target.wants/kiosk.service",
              etc / "systemd/system/multi-user.target.wants/kiosk.service")
    show_file("/etc/admin-note", etc / "admin-note")
    show_file("/etc/kiosk/setup-done (the kiosk hook's file)", etc / "kiosk/setup-done")
    expect((etc / "hostname").read_text() == "signage\n", "hostname signage after the switch")
    expect(not (etc / "kiosk/setup-done").exists(), "the kiosk hook's file gone after the switch")
    expect(not (etc / "localtime").is_symlink(), "no kiosk timezone after the switch")
    expect((etc / "admin-note").exists(), "the admin's note to survive the switch")
    kargs = deployments()[0]["kernel_arguments"]
    expect(kargs == ["root=LABEL=root"], f"kargs root=LABEL=root after the switch, got {kargs}")
    say(
        """The same machine is now a signage screen: its hostname and motd, no kiosk timezone or
        service, no quiet karg (kiosk 1 had added it; root= was the machine's and stays), no file
        the kiosk's deploy hook wrote (the ledger recorded it and the switch undid it), and the
        admin's note is still there. OS 2 + kiosk 2 left the boot list: a switch keeps the new
        deployment and the one it started from."""
    )
    tether("cleanup", "--sysroot", str(SYSROOT))
    say("""cleanup removes what no deployment references any more: old deployment directories,
        composed commits and tether's records of them.""")


def act_8_summary(seconds: float) -> None:
    heading("Summary")
    print(
        textwrap.dedent(
            f"""
            In {seconds:.0f} seconds, from nothing:
              1. the vendor committed an OS and built two product bundles (kiosk, signage), each
                 bound to the OS commit it was tested with;
              2. the repository was published over HTTP;
              3. `tether install` made a kiosk machine: OS + bundle composed into one deployment,
                 with its kernel arguments, /etc files, hostname, timezone, unit and deploy hook;
              4. the admin added a file of their own;
              5. `tether upgrade` moved to OS 2 + kiosk 2 in one step: what the bundle dropped was
                 gone, the karg was replaced, the admin's file stayed;
              6. with OS 3 not yet bound to any bundle, `tether upgrade` stayed put;
              7. `tether rollback` went back to OS 1 + kiosk 1, `tether switch` made the machine a
                 signage screen, and `tether cleanup` removed what nothing used any more.
            Everything is left in {WORK}/ to look at; the next run starts from scratch."""
        )
    )


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (deploy steps run as root in bubblewrap; ostree writes a sysroot)")
        return 1
    started = time.monotonic()
    act = "setting up"
    try:
        start_from_scratch()
        act = "act 1"
        act_1_vendor_builds()
        with serve_directory(REPO_ROOT / REPO, work=REPO_ROOT / WORK / "nginx") as url:
            act = "act 2"
            act_2_publish(url)
            act = "act 3"
            act_3_install(url)
            act = "act 4"
            act_4_admin_edits()
            act = "act 5"
            act_5_release_2()
            act = "act 6"
            act_6_os_ahead()
            act = "act 7"
            act_7_rollback_and_switch()
        act_8_summary(time.monotonic() - started)
    except (DemoFailed, OSError, subprocess.CalledProcessError, RuntimeError) as e:
        print(f"\ndemo: FAILED in {act}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
