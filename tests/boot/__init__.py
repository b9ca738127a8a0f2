"""The boot tier: a bootable Debian OS tree, tether-installed disk images, and QEMU boots of them.

`image` builds the bootable OS (cached between runs), the vendor's per-release layer with tether
in it, and disk images of installed sysroots; `qemu` boots an image the way a boot loader would
(from its default boot loader entry) and collects what the guest reports on a second serial
port; `guest_report` is the program the test bundles ship to report from inside the guest.
"""
