# make deb: dist/skyguard_VERSION_all.deb from debian/ with dpkg-buildpackage (Debian 12's tools and libraries only);
# make test-debian: the unit and BPF tests under Debian's /usr/bin/python3 with the python3-* packages from apt.
# Included by the Makefile.

SG_VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' daemon/skyguard/__init__.py)
SG_DEB_VERSION = $(shell dpkg-parsechangelog -S Version 2>/dev/null)
SG_DEB := dist/skyguard_$(SG_VERSION)_all.deb

.PHONY: deb test-debian

# Debian's tools and interpreter only: pybuild runs `python3.11` from PATH, which must not be a pyenv or venv one
SG_DEB_PATH := /usr/sbin:/usr/bin:/sbin:/bin

# Built from a clean copy (git ls-files, bpf/ symlink kept: setuptools follows it) in build/deb/, so neither the work
# tree's build/, dist/ or egg-info (ignored by git) reach the package; dpkg-buildpackage writes its
# outputs beside the copy, and the .deb is moved to dist/.
deb:
	@[ "$(SG_VERSION)" = "$(SG_DEB_VERSION)" ] || { echo "deb: skyguard.__version__ $(SG_VERSION) but \
debian/changelog $(SG_DEB_VERSION): add a changelog entry (dch -v $(SG_VERSION))" >&2; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/skyguard dist
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t build/deb/skyguard
	cd build/deb/skyguard && env PATH=$(SG_DEB_PATH) dpkg-buildpackage -us -uc -b --no-pre-clean
	mv build/deb/skyguard_$(SG_DEB_VERSION)_all.deb $(SG_DEB)
	@echo "deb: $(SG_DEB)"

# No venv: Debian's interpreter with PYTHONPATH at the sources, -s so ~/.local cannot shadow a Debian module; the
# first step refuses to run when any dependency resolves outside /usr/lib/python3/dist-packages (e.g. a pip install
# into /usr/local), so what passes is what Debian 12 ships. tests/unit/test_install.py is left out: it tests what
# `make install` builds, with /usr/bin/python3 and its own venv whichever interpreter runs pytest, so `make test` has
# already run it on exactly the same install, and its five installs were the slowest part of this second pass.
SG_DEB_PY := env -u VIRTUAL_ENV PYTHONPATH=$(CURDIR)/daemon /usr/bin/python3 -s
test-debian: setup
	$(SG_DEB_PY) tools/check_debian_env.py
	$(SG_DEB_PY) -m pytest -p no:cacheprovider $(PYTEST_PAR) tests/unit tests/bpf --ignore=tests/unit/test_install.py \
		$(PYTEST_ARGS)
