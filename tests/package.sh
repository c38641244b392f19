#!/usr/bin/env bash
# Debian packaging test (issue 6). Builds the packages with dpkg-buildpackage,
# runs lintian, installs them into a throwaway root with `dpkg --root` (the
# maintainer scripts run chrootless, with DPKG_ROOT set), and checks:
#   - dependency licences (debian/check-licenses),
#   - the files, conffiles, man pages and completions of each package,
#   - the systemd units (`systemd-analyze verify`, and `security` under a
#     threshold so hardening cannot quietly regress),
#   - the system users (sysusers.d in the root) and the enabled units,
#   - the conffiles: the installed daemon and tracker start with them,
#     answer /status.json and /stats.json, and stop cleanly on SIGTERM,
#   - the daemon's unit started by systemd as PID 1 in a booted bookworm
#     container, apt through it, restart and stop (tests/systemd-boot.sh),
#   - the installed binaries' --help/--version,
#   - `debtorrent sources --apply`, and that removing the package reverts
#     apt's sources byte for byte (and an upgrade does not); purge cleans up.
#
# Needs (apt): dpkg-dev debhelper lintian systemd python3 (and for the boot
# test debootstrap systemd-container iproute2 gnupg apt-utils), and Rust >= 1.85
# (cargo in PATH). Nothing from the network but crates.io, and only for
# crates not yet in ~/.cargo.
#
# Environment: CARGO_TARGET_DIR (default: this repository's target/, so the
# release build is shared with `cargo build --release`); PKG_WORK (default
# /tmp/debtorrent-package: a fixed path keeps dpkg-buildflags' -ffile-prefix-map
# stable, so cargo reuses the C crates between runs). Prints
# "N passed, N failed" last.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PKG_WORK:-/tmp/debtorrent-package}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
VERSION=$(dpkg-parsechangelog -l "$REPO/debian/changelog" -S Version)
ARCH=$(dpkg --print-architecture)

passed=0
failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
bad() { echo "FAIL - $*"; failed=$((failed + 1)); }
check() { # check "what" command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
logged() { # logged LOG command... : output to LOG, shown if it fails
    local log=$1
    shift
    "$@" >"$log" 2>&1 || { sed 's/^/    /' "$log"; return 1; }
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
}
die() {
    bad "$*"
    finish || true
    exit 1
}

for tool in dpkg-buildpackage dh lintian systemd-analyze python3 cargo; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (see the header of $0)"
done

echo "== licences"
check "every crate in the binaries has an allowed licence" "$REPO/debian/check-licenses"

echo "== build (dpkg-buildpackage; target dir $CARGO_TARGET_DIR)"
rm -rf "$WORK"
mkdir -p "$WORK/src"
# The source tree without build output; dpkg-buildpackage writes the .debs
# next to it, inside $WORK, not beside the repository.
tar -C "$REPO" --exclude=./target --exclude=./.git --exclude='./*/fuzz/target' \
    --exclude='./*/fuzz/corpus' --exclude='./*/fuzz/artifacts' --exclude='./*/fuzz/logs' \
    --exclude=./debian/build --exclude=./debian/.debhelper -cf - . | tar -C "$WORK/src" -xf -
# A rustup toolchain is not the Debian rustc/cargo packages: the profile
# drops them from Build-Depends (debian/README.source).
PROFILE=
if ! dpkg-query -W -f='${Status}' cargo 2>/dev/null | grep -q "ok installed" &&
    ! dpkg-query -W -f='${Status}' cargo-web 2>/dev/null | grep -q "ok installed"; then
    PROFILE=-Ppkg.debtorrent.rustup
fi
start=$(date +%s)
if (cd "$WORK/src" && DEB_BUILD_OPTIONS="parallel=$(nproc)" \
    dpkg-buildpackage -us -uc -b $PROFILE) >"$WORK/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b $PROFILE ($(($(date +%s) - start)) s)"
else
    tail -40 "$WORK/build.log"
    die "dpkg-buildpackage failed (log: $WORK/build.log)"
fi
DEB=$WORK/debtorrent_${VERSION}_${ARCH}.deb
TDEB=$WORK/debtorrent-tracker_${VERSION}_${ARCH}.deb
CHANGES=$WORK/debtorrent_${VERSION}_${ARCH}.changes
[ -f "$DEB" ] && [ -f "$TDEB" ] || die "packages not built"

echo "== lintian"
lintian --fail-on error --display-level ">=pedantic" --tag-display-limit 0 \
    "$CHANGES" >"$WORK/lintian.log" 2>&1 && lint=0 || lint=$?
sed 's/^/    /' "$WORK/lintian.log"
check "lintian: no errors" test "$lint" = 0

echo "== package contents"
contents() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's|^\./|/|'; }
has() { # has DEB PATH...
    local deb=$1 list
    shift
    list=$(contents "$deb")
    for p in "$@"; do
        grep -qx -- "$p" <<<"$list" || { echo "    missing in $(basename "$deb"): $p"; return 1; }
    done
}
check "debtorrent files" has "$DEB" \
    /usr/bin/debtorrent /usr/bin/debtorrent-gen \
    /etc/debtorrent/debtorrent.toml \
    /lib/systemd/system/debtorrent.service \
    /usr/lib/sysusers.d/debtorrent.conf \
    /usr/share/man/man1/debtorrent.1.gz /usr/share/man/man1/debtorrent-serve.1.gz \
    /usr/share/man/man1/debtorrent-sources.1.gz /usr/share/man/man1/debtorrent-gen.1.gz \
    /usr/share/man/man1/debtorrent-gen-make.1.gz \
    /usr/share/bash-completion/completions/debtorrent \
    /usr/share/bash-completion/completions/debtorrent-gen \
    /usr/share/zsh/vendor-completions/_debtorrent \
    /usr/share/fish/vendor_completions.d/debtorrent.fish \
    /usr/share/doc/debtorrent/copyright /usr/share/doc/debtorrent/install.md \
    /usr/share/doc/debtorrent/README.Debian
check "debtorrent-tracker files" has "$TDEB" \
    /usr/bin/debtorrent-tracker /etc/debtorrent/tracker.toml \
    /lib/systemd/system/debtorrent-tracker.service \
    /usr/lib/sysusers.d/debtorrent-tracker.conf \
    /usr/share/man/man1/debtorrent-tracker.1.gz \
    /usr/share/bash-completion/completions/debtorrent-tracker \
    /usr/share/zsh/vendor-completions/_debtorrent-tracker \
    /usr/share/fish/vendor_completions.d/debtorrent-tracker.fish \
    /usr/share/doc/debtorrent-tracker/copyright
no_overlap() { # no file is shipped by both packages (directories may be)
    local dup
    dup=$(comm -12 <(dpkg-deb -c "$DEB" | awk '$1 !~ /^d/ {print $6}' | sort) \
        <(dpkg-deb -c "$TDEB" | awk '$1 !~ /^d/ {print $6}' | sort))
    [ -z "$dup" ] || { echo "    in both: $dup"; return 1; }
}
check "no file in both packages" no_overlap
conffiles() { dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles; }
check "conffiles: debtorrent" test "$(conffiles "$DEB")" = /etc/debtorrent/debtorrent.toml
check "conffiles: debtorrent-tracker" test "$(conffiles "$TDEB")" = /etc/debtorrent/tracker.toml

echo "== install into a throwaway root"
R=$WORK/root
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/etc/apt/sources.list.d"
touch "$R/var/lib/dpkg/status" "$R/var/lib/dpkg/available"
# Chrootless: the root has no shell of its own; maintainer scripts run here
# with DPKG_ROOT=$R (deb-systemd-helper, systemd-sysusers and our prerm honour
# it). Some debhelper snippets call systemctl/deb-systemd-invoke whenever
# /run/systemd/system exists, without looking at DPKG_ROOT; no-op stand-ins
# keep them away from this machine's systemd.
mkdir -p "$WORK/shims"
for s in systemctl deb-systemd-invoke; do
    printf '#!/bin/sh\nexit 0\n' >"$WORK/shims/$s"
    chmod +x "$WORK/shims/$s"
done
DPKG=(env PATH="$WORK/shims:$PATH" dpkg --root="$R" --force-script-chrootless
    --force-not-root --force-depends --log=/dev/null)

# apt sources the admin had before installing: a one-line file and a deb822 file.
printf '%s\n' '# my sources' 'deb http://deb.debian.org/debian bookworm main' \
    'deb [signed-by=/k.gpg] https://security.debian.org/debian-security bookworm-security main' \
    >"$R/etc/apt/sources.list"
printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-updates\nComponents: main\n' \
    >"$R/etc/apt/sources.list.d/debian.sources"
cp -a "$R/etc/apt" "$WORK/apt.orig"

check "dpkg --root -i both packages" logged "$WORK/install.log" "${DPKG[@]}" -i "$DEB" "$TDEB"
status() { dpkg-query --root="$R" -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | tr -d ' '; }
check "both installed" test "$(status debtorrent)$(status debtorrent-tracker)" = "iiii"
check "installing did not touch apt sources" diff -r "$WORK/apt.orig" "$R/etc/apt"
check "system users created (sysusers.d)" grep -q '^_debtorrent:' "$R/etc/passwd"
check "tracker system user created" grep -q '^_debtorrent-tracker:' "$R/etc/passwd"
check "daemon enabled" test -L "$R/etc/systemd/system/multi-user.target.wants/debtorrent.service"
check "tracker installed disabled" test ! -e "$R/etc/systemd/system/multi-user.target.wants/debtorrent-tracker.service"

echo "== systemd units"
# verify on copies whose ExecStart points into the root (verify checks that
# the binary exists) with MANPATH there (it checks Documentation=man:...).
mkdir -p "$WORK/units"
for u in debtorrent debtorrent-tracker; do
    sed "s|^ExecStart=/usr/bin/|ExecStart=$R/usr/bin/|" "$R/lib/systemd/system/$u.service" >"$WORK/units/$u.service"
    check "systemd-analyze verify $u.service" \
        env MANPATH="$R/usr/share/man" systemd-analyze verify "$WORK/units/$u.service"
    score=$(systemd-analyze security --offline=yes "$WORK/units/$u.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    echo "    systemd-analyze security $u.service: ${score:-?}"
    check "$u.service exposure <= 1.5 (got ${score:-?})" logged "$WORK/security-$u.log" \
        systemd-analyze security --offline=yes --threshold=15 "$WORK/units/$u.service"
done

echo "== binaries"
for b in debtorrent debtorrent-gen debtorrent-tracker; do
    check "$b --version" sh -c "'$R/usr/bin/$b' --version | grep -q '^$b $VERSION\$'"
    check "$b --help" sh -c "'$R/usr/bin/$b' --help | grep -q Usage"
done
check "debtorrent serve --help" sh -c "'$R/usr/bin/debtorrent' serve --help | grep -q -- --data-dir"
for m in debtorrent-serve debtorrent-gen debtorrent-tracker; do
    check "man page $m.1 is roff" sh -c "zcat '$R/usr/share/man/man1/$m.1.gz' | grep -q '^\.TH'"
done

echo "== config"
conf=$R/etc/debtorrent/debtorrent.toml
check "debtorrent.toml sets data-dir to the unit's CacheDirectory" \
    grep -qx 'data-dir = "/var/cache/debtorrent"' "$conf"
check "debtorrent.toml sets nothing else" \
    test "$(grep -v '^#' "$conf" | grep -c .)" = 1
check "debtorrent.toml lists every serve option" python3 - "$conf" "$R/usr/bin/debtorrent" <<'EOF'
import re, subprocess, sys
conf, binary = sys.argv[1:]
text = open(conf).read()
help = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
opts = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", help, re.M)) - {"help", "config", "version"}
missing = [o for o in sorted(opts) if not re.search(rf"^#?{o} = ", text, re.M)]
print("    missing:", missing) if missing else None
sys.exit(1 if missing else 0)
EOF
tconf=$R/etc/debtorrent/tracker.toml
check "tracker.toml lists every option" python3 - "$tconf" "$R/usr/bin/debtorrent-tracker" <<'EOF'
import re, subprocess, sys
conf, binary = sys.argv[1:]
text = open(conf).read()
help = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
opts = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", help, re.M)) - {"help", "config", "version"}
missing = [o for o in sorted(opts) if not re.search(rf"^#{o} = ", text, re.M)]
print("    missing:", missing) if missing else None
sys.exit(1 if missing else 0)
EOF

# Start a daemon with the installed binary and conffile (flags override the
# packaged paths), wait for its "listening" line, fetch a page, SIGTERM it.
run_daemon() { # run_daemon NAME PATH-TO-FETCH PATTERN-IN-PAGE command...
    local name=$1 page=$2 want=$3 out=$WORK/$1.out pid addr body rc
    shift 3
    "$@" >"$out" 2>"$WORK/$name.err" &
    pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening \(on \)\{0,1\}\(http=\)\{0,1\}\(http:\/\/\)\{0,1\}\([0-9.]*:[0-9]*\).*/\4/p' "$out" | head -1)
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        sed 's/^/    /' "$WORK/$name.err"
        return 1
    fi
    body=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
        "http://$addr$page") || body=
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    if ! grep -q "$want" <<<"$body"; then
        echo "    $page from $name: ${body:0:300}"
        return 1
    fi
    [ "$rc" = 0 ] || { echo "    $name exited $rc after SIGTERM"; return 1; }
}
check "daemon runs with the packaged config, serves /status.json, stops on SIGTERM" \
    run_daemon debtorrent /status.json '"version"' \
    "$R/usr/bin/debtorrent" serve --config "$conf" --data-dir "$WORK/data" --listen 127.0.0.1:0 \
    --peer-addr 127.0.0.1:0 --dht-bootstrap none --no-lsd
check "daemon created its data folder" test -f "$WORK/data/state.db"
check "tracker runs with the packaged config, serves /stats.json, stops on SIGTERM" \
    run_daemon debtorrent-tracker /stats.json 'peers' \
    "$R/usr/bin/debtorrent-tracker" --config "$tconf" --data-dir "$WORK/tdata" \
    --http-listen 127.0.0.1:0 --udp-listen 127.0.0.1:0

# The units under a real systemd, PID 1 in a container (issue 15).
# shellcheck source=tests/systemd-boot.sh
source "$REPO/tests/systemd-boot.sh"

echo "== apt sources: --apply, upgrade, remove, purge"
check "debtorrent sources --apply --root" logged "$WORK/apply.log" \
    "$R/usr/bin/debtorrent" sources --apply --root "$R"
check "sources now go through the daemon" \
    grep -q 'deb http://localhost:9988/deb.debian.org/debian bookworm main' "$R/etc/apt/sources.list"
check "deb822 sources too" \
    grep -qx 'URIs: http://localhost:9988/deb.debian.org/debian' "$R/etc/apt/sources.list.d/debian.sources"
check "backups kept under /var/backups/debtorrent" \
    test "$(find "$R/var/backups/debtorrent" -name '*_etc_apt_sources.list*' | wc -l)" = 2
check "reinstall (prerm upgrade) keeps the daemon sources" logged "$WORK/reinstall.log" \
    "${DPKG[@]}" -i "$DEB"
check "... so apt still goes through the daemon" grep -q localhost:9988 "$R/etc/apt/sources.list"
mkdir -p "$R/var/cache/debtorrent/store"
check "dpkg --remove debtorrent" logged "$WORK/remove.log" "${DPKG[@]}" --remove debtorrent
check "removal reverted apt sources byte for byte" diff -r "$WORK/apt.orig" "$R/etc/apt"
check "no localhost:9988 left in apt sources" sh -c "! grep -rq localhost:9988 '$R/etc/apt'"
check "conffile kept after remove" test -f "$R/etc/debtorrent/debtorrent.toml"
check "dpkg --purge both" logged "$WORK/purge.log" "${DPKG[@]}" --purge debtorrent debtorrent-tracker
check "purge removed conffiles" test ! -e "$R/etc/debtorrent/debtorrent.toml" -a ! -e "$R/etc/debtorrent/tracker.toml"
check "purge removed the cache folder" test ! -e "$R/var/cache/debtorrent"
check "purge removed the enable symlink" test ! -e "$R/etc/systemd/system/multi-user.target.wants/debtorrent.service"
check "nothing left of the packages" sh -c "! dpkg-query --root='$R' -W debtorrent debtorrent-tracker 2>/dev/null | grep -q ."

finish
