#!/usr/bin/env bash
# make setup: everything skyguard needs on a fresh Debian 12 machine, as root. Idempotent; says what it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*"; }

APT_PKGS=(python3-bpfcc libbpfcc linux-headers-amd64 iproute2 ethtool python3-venv tcpreplay netsniff-ng tshark libndpi-bin pmacct
          systemd gcc make prometheus python3-prometheus-client)
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs Debian packages and links kernel headers)" >&2
    exit 1
fi

# 1. Debian packages (bcc comes from Debian, not PyPI)
missing=()
for p in "${APT_PKGS[@]}"; do
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
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -z "$hdr" ]; then echo "setup: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2; exit 1; fi
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

# 4. The venv (Python >= 3.11) that sees Debian's bcc module, and only that module
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for c in python3.11 python3 /usr/bin/python3; do
        if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$c; break; fi
    done
fi
[ -n "$PY" ] || { echo "setup: no Python >= 3.11 found" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    say "created .venv with $("$PY" --version)"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-bcc
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc
echo "$PWD/.venv/debian-bcc" > "$site/debian-bcc.pth"
.venv/bin/python -c 'import bcc' || { echo "setup: .venv cannot import bcc" >&2; exit 1; }

stamp=.venv/.skyguard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
    say "installed skyguard (editable) with test dependencies into .venv"
else
    say ".venv up to date"
fi
say "ready: .venv/bin/skyguard, .venv/bin/skyguardd"
