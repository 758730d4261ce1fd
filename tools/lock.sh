#!/usr/bin/env bash
# make lock: regenerate requirements/*.txt (hashed pins for the venvs of `make setup` and `make install`) from
# pyproject.toml and requirements/build.in, against PyPI itself. This machine's pip configuration (find-links to local
# wheels, extra file:// indexes) is switched off, so the lock names only files that CI and routers can fetch from PyPI.
# pip-tools runs from a throwaway venv: it is a maintainer's tool, not a dependency of skyguard.
set -euo pipefail
cd "$(dirname "$0")/.."
PIPTOOLS_VERSION=7.6.2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_INDEX_URL=https://pypi.org/simple
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_NO_INDEX
/usr/bin/python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "pip-tools==$PIPTOOLS_VERSION"
compile() {
    CUSTOM_COMPILE_COMMAND="make lock" "$tmp/venv/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --newline=lf --resolver=backtracking "$@"
}
# the routers' venv (make install): the runtime dependencies and the build backend
compile -o requirements/install.txt pyproject.toml requirements/build.in
# the development venv (make setup): the same plus the test tools (pytest, hypothesis, scapy, ruff)
compile --extra test -o requirements/dev.txt pyproject.toml requirements/build.in
echo "lock: wrote requirements/install.txt and requirements/dev.txt"
