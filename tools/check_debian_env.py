#!/usr/bin/python3
"""make test-debian's guard: every library skyguard and its tests import comes from Debian 12's packages.

Run with Debian's /usr/bin/python3. Prints each module's version and where it was found; exits 1 when one is missing
or resolves outside /usr/lib/python3/dist-packages (a pip install into /usr/local would otherwise be tested instead).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

DEBIAN = "/usr/lib/python3/dist-packages/"
# module -> Debian package that provides it
MODULES = {
    "bcc": "python3-bpfcc",
    "structlog": "python3-structlog",
    "msgpack": "python3-msgpack",
    "pyroute2": "python3-pyroute2",
    "numpy": "python3-numpy",
    "prometheus_client": "python3-prometheus-client",
    "pytest": "python3-pytest",
    "xdist": "python3-pytest-xdist",
    "hypothesis": "python3-hypothesis",
    "scapy": "python3-scapy",
}


def main() -> int:
    bad = []
    if sys.prefix != sys.base_prefix:
        bad.append(f"running in a venv ({sys.prefix}), not Debian's interpreter")
    for name, pkg in MODULES.items():
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            bad.append(f"{name}: not importable ({e}): apt-get install {pkg}")
            continue
        where = str(getattr(mod, "__file__", "") or "")
        try:
            version = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = str(getattr(mod, "__version__", "?"))
        print(f"test-debian: {name} {version} from {where}")
        if not where.startswith(DEBIAN):
            bad.append(f"{name} comes from {where}, not {DEBIAN} ({pkg})")
    for b in bad:
        print(f"test-debian: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
