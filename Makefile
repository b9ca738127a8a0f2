# Entry points for newcomers, developers and CI. `make setup` is idempotent: it
# installs only the Debian packages that are missing, and reinstalls the
# virtualenv only when pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PYTEST_ARGS ?=

# Debian 12 packages: libostree and its GObject introspection data, bubblewrap for
# sandboxed steps, what pip needs to build PyGObject, and the tools the tests,
# demo and benchmark use (nginx, debootstrap, /usr/bin/time, mkfs/swap tools, gpg,
# busybox as the shell of the small synthetic OS trees, and QEMU for the boot tier).
APT_PACKAGES := ostree gir1.2-ostree-1.0 bubblewrap \
	libgirepository1.0-dev libcairo2-dev pkg-config python3-venv python3-dev gcc \
	nginx-light debootstrap time e2fsprogs git ca-certificates gnupg busybox-static acl \
	qemu-system-x86

.PHONY: setup system-packages test test-boot demo bench clean

setup: $(VENV)/.installed

system-packages:
	@missing=""; \
	for package in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to install:$$missing" >&2; exit 1; fi; \
		echo "Installing:$$missing"; \
		apt-get update; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	$(VENV)/bin/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	@# a CA bundle named by the environment but missing (being regenerated) must not stop pip
	if [ -n "$${PIP_CERT:-}" ] && [ ! -f "$$PIP_CERT" ]; then unset PIP_CERT REQUESTS_CA_BUNDLE; fi; \
		$(VENV)/bin/pip install --quiet -e '.[dev]'
	@# PyGObject from PyPI must find Debian's typelibs (/usr/lib/*/girepository-1.0).
	$(VENV)/bin/python -c "import gi; gi.require_version('OSTree', '1.0'); from gi.repository import OSTree"
	touch $@

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The boot tier alone: a tether-installed disk image booted in QEMU (docs/booting.md).
test-boot: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m boot $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/python demo/run.py

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache build *.egg-info bench/work demo/work
	find . -name __pycache__ -prune -exec rm -rf {} +
