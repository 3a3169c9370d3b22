# zero — developer entry points. `make run` mounts, `make test` tests.
#
# Written for a fresh Debian 12 machine with Python 3.11, run as root (or with
# sudo): `make setup` installs the few system programs zero needs, a virtualenv
# in .venv, and the package with its test extra.

SHELL := /bin/bash
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-installed
MNT := mnt
CACHE := cache

# Per-test timeout, used only if pytest-timeout happens to be installed
# (it is not a dependency). Extra pytest arguments: make test PYTEST_ARGS='-k evict'.
TEST_TIMEOUT_S ?= 300
PYTEST_ARGS ?=

# program that must exist -> Debian package that provides it
SYSTEM_PROGRAMS := fusermount3:fuse3 rsync:rsync getfattr:attr sqlite3:sqlite3 git:git

.PHONY: help setup system-deps run test soak bench clean

help:
	@echo "make run    mount zero at ./$(MNT) (cache ./$(CACHE)) with its worker; Ctrl-C unmounts"
	@echo "make test   run the test suite (make soak: also the slow soak tests)"
	@echo "make bench  benchmark zero against a plain folder (BENCH_ARGS=--peers: also a passthrough, JuiceFS, rclone)"
	@echo "make setup  system packages, .venv and the package (run by the others)"
	@echo "make clean  unmount, then remove .venv, ./$(CACHE) and ./$(MNT)"

setup: system-deps $(STAMP)

# apt-get runs only when something is missing, and `apt-get update` only then.
# python3-venv is added when this Python cannot create a virtualenv with pip
# (Debian's python3 lacks ensurepip until python3-venv is installed).
system-deps:
	@missing=""; \
	for pair in $(SYSTEM_PROGRAMS); do \
	  program=$${pair%%:*}; package=$${pair#*:}; \
	  command -v "$$program" >/dev/null 2>&1 || dpkg -s "$$package" >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "make setup: missing packages:$$missing; install them as root: apt-get install -y$$missing" >&2; exit 1; fi; \
	  echo "make setup: installing$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# The venv is created once; a failed creation leaves nothing half-made behind.
$(VENV)/pyvenv.cfg: | system-deps
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

# Re-installs only when setup.py changes (or the venv is new).
$(STAMP): setup.py $(VENV)/pyvenv.cfg
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	@touch $@

run: setup
	@scripts/run.sh

# pytest exits with 5 when it collects no tests; that stays a failure here.
test: setup
	@timeout_args=""; \
	if $(PY) -c 'import pytest_timeout' >/dev/null 2>&1; then timeout_args="--timeout=$(TEST_TIMEOUT_S)"; fi; \
	rc=0; $(PY) -m pytest tests -q -p no:cacheprovider $$timeout_args $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure" >&2; fi; \
	exit $$rc

# The slow soak/stress tests run only when ZERO_SOAK=1.
soak:
	ZERO_SOAK=1 $(MAKE) test

bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# Never remove ./mnt while something is still mounted there: rm would reach
# through the mount.
clean:
	@if grep -qs " $(CURDIR)/$(MNT) " /proc/self/mounts; then \
	  fusermount3 -u $(MNT) || { echo "make clean: $(MNT) is busy; close what uses it (or fusermount3 -uz $(MNT)) and retry" >&2; exit 1; }; \
	fi
	rm -rf $(VENV) $(CACHE) $(MNT) *.egg-info
