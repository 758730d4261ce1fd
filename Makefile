# skyguard: make setup | demo | test | bench | lint | install | uninstall | deb | test-debian | lock
PY      := .venv/bin/python
PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
# pytest's workers (pytest-xdist), a test file to each: most of the suite waits on real daemons, timeouts and traffic,
# so one worker more than the CPUs keeps them busy; a file's module fixtures (a loaded program) stay in one worker
PYTEST_JOBS ?= $(shell n=$$(( $$(nproc) + 1 )); [ $$n -gt 8 ] && n=8; echo $$n)
PYTEST_PAR := -n $(PYTEST_JOBS) --dist loadfile

.PHONY: setup demo test test-unit bench lint install uninstall clean

setup:
	@bash tools/setup.sh

demo: setup
	$(PY) -m skyguard.cli lab

test: setup
	$(PY) -m ruff check daemon tests bench tools
	$(PY) -m pytest $(PYTEST_PAR) $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest $(PYTEST_PAR) tests/unit $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

lint: setup
	$(PY) -m ruff check daemon tests bench tools

include mk/install.mk
include mk/deb.mk
include mk/lock.mk

clean:
	rm -rf .venv build dist *.egg-info daemon/*.egg-info .pytest_cache .ruff_cache
