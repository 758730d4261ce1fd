# make lock: regenerate the venvs' lock files (requirements/install.txt for make install, requirements/dev.txt for
# make setup) from pyproject.toml with pip-compile --generate-hashes, against PyPI. Included by the Makefile.
.PHONY: lock
lock:
	@bash tools/lock.sh
