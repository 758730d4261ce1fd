#!/usr/bin/env bash
# make setup: everything skyguard needs on a fresh Debian 12 machine, as root. Idempotent; says what it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*"; }
# Debian's kernel header meta-package is named after the kernel flavour, which is the dpkg architecture except where
# Debian builds several kernels for one architecture
case "$(dpkg --print-architecture)" in
    armhf) KFLAVOUR=armmp ;;
    i386) KFLAVOUR=686-pae ;;
    ppc64el) KFLAVOUR=powerpc64le ;;
    *) KFLAVOUR=$(dpkg --print-architecture) ;;
esac

APT_PKGS=(python3-bpfcc libbpfcc "linux-headers-$KFLAVOUR" iproute2 ethtool python3-venv tcpreplay netsniff-ng tshark libndpi-bin pmacct
          systemd gcc make prometheus python3-prometheus-client xdp-tools nftables)
# make deb (tests/pkg) and make test-debian: the build tools, and the libraries the suite runs on under /usr/bin/python3
DEB_PKGS=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel dpkg-dev lintian
          man-db python3-structlog python3-msgpack python3-pyroute2 python3-numpy python3-scapy python3-pytest
          python3-hypothesis python3-pytest-xdist)
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs Debian packages and links kernel headers)" >&2
    exit 1
fi

# 1. Debian packages (bcc comes from Debian, not PyPI)
missing=()
for p in "${APT_PKGS[@]}" "${DEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # tshark asks whether non-root users may capture: answer no without a prompt
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi

# 2. Kernel headers for bcc: the running kernel ships none; an XDP program needs only UAPI headers, so the
#    distribution's headers are sound. Link build/ and source/ when missing.
krel=$(uname -r)
moddir=/lib/modules/$krel
if [ ! -e "$moddir/build/include/generated" ] && [ ! -e "$moddir/build/include/linux/kconfig.h" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-"$KFLAVOUR" 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -z "$hdr" ]; then
        echo "setup: no /usr/src/linux-headers-*-$KFLAVOUR after installing linux-headers-$KFLAVOUR" >&2; exit 1
    fi
    mkdir -p "$moddir"
    ln -sfn "$hdr" "$moddir/build"
    ln -sfn "${common:-$hdr}" "$moddir/source"
    say "linked $moddir/build -> $hdr and source -> ${common:-$hdr} (running kernel ships no headers)"
else
    say "kernel headers for $krel present"
fi

# 3. bpffs for pinned maps
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf && say "mounted bpffs on /sys/fs/bpf"
else
    say "bpffs mounted"
fi

# 4. The venv: Debian's /usr/bin/python3, the interpreter python3-bpfcc is built for, seeing Debian's bcc module and
#    only that. Its packages come from the lock (requirements/dev.txt: every file's hash, the build backend included),
#    then skyguard itself, editable, built by the locked setuptools without fetching anything.
PY=/usr/bin/python3
pip_() { "$1/bin/python" -m pip -q --disable-pip-version-check "${@:2}"; }
build_venv() {  # build_venv DIR: a complete venv in DIR, for the work tree's .venv
    "$PY" -m venv "$1"
    local site; site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$1/debian-bcc"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$1/debian-bcc/bcc"
    echo "$PWD/.venv/debian-bcc" > "$site/debian-bcc.pth"  # the final path: DIR is renamed to .venv
    pip_ "$1" install --require-hashes -r requirements/dev.txt
    pip_ "$1" install --no-deps --no-build-isolation -e .
}
stamp=.venv/.skyguard-installed
if [ ! -x .venv/bin/python ] || ! grep -qx 'home = /usr/bin' .venv/pyvenv.cfg 2>/dev/null; then
    # a missing venv, or one made from another Python (e.g. pyenv's): built aside and swapped in; the old one stays as
    # .venv.old until the next swap, so a test already running from it keeps its files
    new=.venv.new.$$
    rm -rf "$new"; trap 'rm -rf "$new"' EXIT
    build_venv "$new"
    grep -rlIF --exclude-dir=__pycache__ "$PWD/$new" "$new/bin" "$new/pyvenv.cfg" | xargs -r sed -i "s|$PWD/$new|$PWD/.venv|g"
    touch "$new/.skyguard-installed"
    rm -rf .venv.old
    if [ -e .venv ]; then mv .venv .venv.old; fi
    mv "$new" .venv
    say "created .venv with $("$PY" --version) from requirements/dev.txt"
elif [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/dev.txt -nt "$stamp" ]; then
    pip_ .venv install --require-hashes -r requirements/dev.txt
    pip_ .venv install --no-deps --no-build-isolation -e .
    touch "$stamp"
    say "updated .venv from requirements/dev.txt"
else
    say ".venv up to date"
fi
.venv/bin/python -c 'import bcc' || { echo "setup: .venv cannot import bcc" >&2; exit 1; }
say "ready: .venv/bin/skyguard, .venv/bin/skyguardd"
