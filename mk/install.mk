# make install / make uninstall (included by the Makefile, which defines PREFIX, DESTDIR, SYSCONFDIR, UNITDIR).
#
# install puts skyguard into its own venv ($(PREFIX)/lib/skyguard/venv) made with the system Python, which sees
# Debian's bcc module (python3-bpfcc) through a .pth file, the same trick as tools/setup.sh. Its dependencies are the
# versions and hashes in requirements/install.txt (make lock), from PyPI (or from wherever SG_PIP_FLAGS points pip,
# e.g. "--no-index --find-links=wheels/"). Routers that take their software from Debian use `make deb` instead.
# Every path it creates is listed in $(PREFIX)/share/skyguard/MANIFEST, one per line, as "TYPE PATH" without DESTDIR:
#   f PATH            a file, symlink or socket-free leaf: removed by uninstall
#   t PATH            a directory tree made wholly by install (the venv): removed with its contents
#   c PATH PRISTINE   an operator-editable config: removed only while it still equals the shipped PRISTINE copy
#   d PATH            a directory that did not exist before: removed when empty
# so uninstall removes exactly what install made and leaves edited configs in place.

SG_PYTHON     ?= /usr/bin/python3
SG_BCC_DIR    ?= /usr/lib/python3/dist-packages/bcc
SG_PIP_FLAGS  ?=
SG_LOCK       ?= requirements/install.txt
SYSUSERSDIR   ?= $(PREFIX)/lib/sysusers.d
SG_LIBDIR     := $(PREFIX)/lib/skyguard
SG_VENV       := $(SG_LIBDIR)/venv
SG_DATADIR    := $(PREFIX)/share/skyguard
SG_CONFDIR    := $(SYSCONFDIR)/skyguard
SG_MANIFEST   := $(SG_DATADIR)/MANIFEST

# The recipes are bash scripts kept in variables (make expands $(VAR); $$ is a shell $) and run with `bash -c`.
define SG_INSTALL_SH
D='$(DESTDIR)'
case '$(PREFIX)$(SYSCONFDIR)$(UNITDIR)$(DESTDIR)' in
    *' '*) echo "install: paths with spaces are not supported" >&2; exit 2;;
esac
[ -x '$(SG_PYTHON)' ] || { echo "install: $(SG_PYTHON) not found (set SG_PYTHON to a Python >= 3.11)" >&2; exit 1; }
'$(SG_PYTHON)' -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install: $(SG_PYTHON) is older than 3.11" >&2; exit 1; }
say() { printf 'install: %s\n' "$$*"; }
M="$$D$(SG_MANIFEST)"
new=$$(mktemp); trap 'rm -f "$$new"' EXIT
rec() { printf '%s\n' "$$*" >> "$$new"; }
# mkd DIR: create DIR and missing parents, recording only the ones that did not exist
mkd() { [ -d "$$D$$1" ] && return 0; mkd "$$(dirname "$$1")"; mkdir -m 0755 "$$D$$1"; rec d "$$1"; }
# put MODE SRC DST: install one file and record it
put() { install -m "$$1" "$$2" "$$D$$3"; rec f "$$3"; }
# keep the record of an earlier install: directories it created are ours even though they exist now
[ -f "$$M" ] && cat "$$M" >> "$$new"
mkd '$(SG_DATADIR)'; mkd '$(SG_LIBDIR)'; mkd '$(PREFIX)/bin'; mkd '$(SG_CONFDIR)'; mkd '$(UNITDIR)'
mkd '$(SG_DATADIR)/policies'; mkd '$(SYSUSERSDIR)'

# 1. the venv, rebuilt from scratch on every install so no stale package or dependency survives
V="$$D$(SG_VENV)"
rm -rf "$$V"
'$(SG_PYTHON)' -m venv "$$V"
rec t '$(SG_VENV)'
site=$$("$$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$$V/debian-bcc"
ln -sfn '$(SG_BCC_DIR)' "$$V/debian-bcc/bcc"
# a relative .pth entry (site.py joins it with site-packages): stays valid when DESTDIR is stripped
echo "../../../debian-bcc" > "$$site/debian-bcc.pth"
say "installing the skyguard package and its dependencies into $(SG_VENV) (pip)"
# build from a clean copy (bpf/ symlink resolved): no build/ or egg-info left in, or taken from, the work tree
src=$$(mktemp -d); trap 'rm -rf "$$new" "$$src"' EXIT
cp -rL pyproject.toml daemon "$$src/"; for f in README.md LICENSE; do if [ -f "$$f" ]; then cp "$$f" "$$src/"; fi; done
rm -rf "$$src"/daemon/*.egg-info; find "$$src" -name __pycache__ -prune -exec rm -rf {} +
# the dependencies and the build backend from the lock, every file checked against its hash; then skyguard itself,
# built by that setuptools with nothing else fetched
pipi() { "$$V/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location $(SG_PIP_FLAGS) "$$@"; }
pipi --require-hashes -r '$(SG_LOCK)'
pipi --no-deps --no-build-isolation "$$src"
"$$V/bin/python" -c 'import skyguard.wire as w; assert (w.bpf_dir() / "skyguard.h").is_file()' \
    || { echo "install: the installed package lacks its bpf/ sources" >&2; exit 1; }
if [ -n "$$D" ]; then
    # scripts pip wrote name the DESTDIR path in their #! line and in pyvenv.cfg: point them at the final path
    grep -rlIF --exclude-dir=__pycache__ "$$V" "$$V/bin" "$$V/pyvenv.cfg" | xargs -r sed -i "s|$$V|$(SG_VENV)|g"
fi
"$$V/bin/python" -c 'import bcc' 2>/dev/null \
    || say "warning: bcc is not importable from the venv (install python3-bpfcc)"

# 2. command wrappers
for cmd in skyguard skyguardd; do
    w=$$(mktemp)
    printf '#!/bin/sh\n# skyguard wrapper: runs the command from its venv\nexec %s/bin/%s "$$@"\n' \
        '$(SG_VENV)' "$$cmd" > "$$w"
    put 0755 "$$w" "$(PREFIX)/bin/$$cmd"; rm -f "$$w"
done

# 3. policies, and the default policy (observe-only) unless the operator has one
for p in policies/*.toml; do if [ -f "$$p" ]; then put 0644 "$$p" "$(SG_DATADIR)/policies/$${p##*/}"; fi; done
# conf NAME SHIPPED PRISTINE: install an operator config, never overwriting an existing one
conf() {
    local dst="$(SG_CONFDIR)/$$1"
    if [ ! -e "$$D$$dst" ]; then
        install -m 0644 "$$2" "$$D$$dst"; rec c "$$dst" "$$3"
    elif cmp -s "$$2" "$$D$$dst"; then
        rec c "$$dst" "$$3"
    else
        put 0644 "$$2" "$$dst.new"; rec c "$$dst" "$$3"
        say "kept your $$dst (it differs from the shipped one); the shipped one is $$dst.new"
    fi
}
if [ -f policies/observe-only.toml ]; then
    conf policy.toml policies/observe-only.toml '$(SG_DATADIR)/policies/observe-only.toml'
else
    say "warning: policies/observe-only.toml is missing: no default policy installed"
fi

# 4. the daemon config: the shipped copy stays beside the data so uninstall can tell an edited config from ours
if [ -f systemd/skyguard.toml ]; then
    put 0644 systemd/skyguard.toml '$(SG_DATADIR)/skyguard.toml'
    conf skyguard.toml systemd/skyguard.toml '$(SG_DATADIR)/skyguard.toml'
else
    say "warning: systemd/skyguard.toml is missing: no example config installed"
fi

# 5. systemd: the unit with the real paths, and the socket group
u=$$(mktemp)
sed -e 's|/usr/local/bin/skyguard|$(PREFIX)/bin/skyguard|g' -e 's|/etc/skyguard/|$(SG_CONFDIR)/|g' \
    systemd/skyguard.service > "$$u"
put 0644 "$$u" '$(UNITDIR)/skyguard.service'; rm -f "$$u"
# the metrics drop-in is opt-in: shipped beside the data, copied into /etc/systemd/system/skyguard.service.d/ by hand
put 0644 systemd/skyguard-metrics.conf '$(SG_DATADIR)/skyguard-metrics.conf'
put 0644 systemd/skyguard-ipfix.conf '$(SG_DATADIR)/skyguard-ipfix.conf'
put 0644 systemd/skyguard.sysusers '$(SYSUSERSDIR)/skyguard.conf'

# 6. the manifest: earlier records first, duplicates dropped, itself last
rec f '$(SG_MANIFEST)'
awk '!seen[$$0]++' "$$new" > "$$M"; chmod 0644 "$$M"
say "installed $$(grep -c '^[ft] ' "$$M") files and trees; list in $(SG_MANIFEST)"
if [ -z "$$D" ]; then
    command -v systemd-sysusers >/dev/null && systemd-sysusers '$(SYSUSERSDIR)/skyguard.conf' || true
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
    say "next: edit $(SG_CONFDIR)/skyguard.toml (interfaces), then: systemctl enable --now skyguard"
fi
endef

define SG_UNINSTALL_SH
D='$(DESTDIR)'
M="$$D$(SG_MANIFEST)"
say() { printf 'uninstall: %s\n' "$$*"; }
[ -f "$$M" ] || { echo "uninstall: no $$M: nothing installed here (or installed by something else)" >&2; exit 1; }
# 0. on the live system: skyguard's XDP program off every interface, and each program it chained (foreign_xdp = chain)
#    put back as it was attached, while the daemon that can do it is still installed (pins stay)
if [ -z "$$D" ] && [ -x '$(SG_VENV)/bin/python' ]; then
    '$(SG_VENV)/bin/python' -m skyguard.daemon --detach | sed 's/^/uninstall: /' \
        || say "warning: skyguardd --detach failed: check ip link for a leftover xdp_skyguard program"
fi
# 1. configs first, while their pristine copies are still there to compare with
while read -r type path pristine; do
    [ "$$type" = c ] || continue
    [ -e "$$D$$path" ] || continue
    if cmp -s "$$D$$path" "$$D$$pristine"; then rm -f "$$D$$path"
    else say "kept $$path: it differs from the shipped one (remove it yourself if unwanted)"; fi
done < "$$M"
# 2. files and trees
while read -r type path _; do
    case "$$type" in
        f) [ "$$path" = '$(SG_MANIFEST)' ] || rm -f "$$D$$path" ;;
        t) case "$$path" in '$(SG_LIBDIR)'/*) rm -rf "$$D$$path" ;; *) say "refusing to remove tree $$path" ;; esac ;;
    esac
done < "$$M"
# 3. directories install created, deepest first, only when empty
dirs=$$(awk '$$1 == "d" { print $$2 }' "$$M" | sort -r)
rm -f "$$M"
for d in $$dirs; do
    [ -d "$$D$$d" ] || continue
    rmdir "$$D$$d" 2>/dev/null || say "kept $$d: not empty"
done
if [ -z "$$D" ]; then
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
    say "the skyguard group, an attached XDP program and /sys/fs/bpf/skyguard pins are left as they are"
fi
say "done"
endef
export SG_INSTALL_SH SG_UNINSTALL_SH

install:
	@bash -euo pipefail -c "$$SG_INSTALL_SH"

uninstall:
	@bash -euo pipefail -c "$$SG_UNINSTALL_SH"
