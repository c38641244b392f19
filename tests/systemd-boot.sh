# The packaged units under a real systemd (issue 15). Sourced by
# tests/package.sh after the packages are built and checked; uses its
# ok/bad/check/logged helpers and $DEB, $WORK, $R (the dpkg --root tree).
#
# A Debian bookworm tree (debootstrap, cached) boots with systemd as PID 1
# in systemd-nspawn, inside a network namespace this script creates (only
# a loopback, with multicast on for LSD). In that namespace, outside the
# container, run a tiny signed apt repository (python3 http.server) and a
# second debtorrent (the packaged binary) as DHT bootstrap node. Inside:
# the built .deb is installed with dpkg, `systemctl start debtorrent`, apt
# is routed through it with `debtorrent sources --apply`, and apt installs
# a package from the repository through the daemon. Then: the daemon's
# store, state, peer port, DHT and LSD work under the unit's sandboxing;
# the journal is plain text with one line per apt request; `debtorrent
# status` answers; SIGKILL is followed by a restart (Restart=on-failure);
# `systemctl stop` (SIGTERM) ends it well within TimeoutStopSec.
#
# Needs root (nspawn, netns), debootstrap, systemd-container, iproute2,
# gnupg, apt-utils, python3. The tree is built once (about 3 minutes from
# the mirror the host's apt uses) into $DEBTORRENT_TEST_CACHE (default
# /var/cache/debtorrent-test) and copied for each run (a few seconds).
# SKIP_SYSTEMD_BOOT=1 skips this part.

echo "== systemd as PID 1: debootstrap + systemd-nspawn --boot"

nspawn_test() {
    local cache=${DEBTORRENT_TEST_CACHE:-/var/cache/debtorrent-test}
    local include=systemd,systemd-sysv,dbus,apt,ca-certificates,curl
    local stamp="bookworm minbase $include"
    local base=$cache/rootfs
    local tree=$WORK/nspawn-root ns=dtboot$$ mport=18080 nspawn_pid= peer_pid= mirror_pid=
    local t0 secs

    if [ "$(id -u)" != 0 ]; then
        echo "    skipped: needs root (systemd-nspawn, network namespaces)"
        return 0
    fi
    for t in debootstrap systemd-nspawn nsenter ip gpg apt-ftparchive python3; do
        command -v "$t" >/dev/null || { bad "missing tool for the boot test: $t"; return 1; }
    done

    # The cached tree, rebuilt when the package list changes.
    if [ ! -f "$base/.debtorrent-stamp" ] || [ "$(cat "$base/.debtorrent-stamp")" != "$stamp" ]; then
        local mirror
        mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p; s/^deb \(http[^ ]*\/debian\) bookworm .*/\1/p' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
        mirror=${mirror:-http://deb.debian.org/debian}
        rm -rf "$base" "$base.tmp"
        mkdir -p "$cache"
        t0=$(date +%s)
        if ! timeout 1200 debootstrap --variant=minbase --include="$include" bookworm "$base.tmp" "$mirror" \
            >"$WORK/debootstrap.log" 2>&1; then
            tail -20 "$WORK/debootstrap.log" | sed 's/^/    /'
            bad "debootstrap bookworm from $mirror"
            return 1
        fi
        echo "$stamp" >"$base.tmp/.debtorrent-stamp"
        mv "$base.tmp" "$base"
        ok "debootstrap bookworm from $mirror ($(($(date +%s) - t0)) s, cached in $base)"
    fi
    rm -rf "$tree"
    cp -a "$base" "$tree"
    # No route to the mirror from inside: apt sees only the test repository.
    rm -f "$tree/etc/apt/sources.list" "$tree"/etc/apt/sources.list.d/*

    # The apt repository: one package, signed with a throwaway key.
    local repo=$WORK/nspawn-repo gh=$WORK/nspawn-gpg
    rm -rf "$repo" "$gh"
    mkdir -p "$repo/debian/pool/main" "$repo/debian/dists/stable/main/binary-amd64" "$gh" "$WORK/hello/DEBIAN" \
        "$WORK/hello/usr/share/dt-hello"
    chmod 700 "$gh"
    head -c 300000 /dev/urandom >"$WORK/hello/usr/share/dt-hello/payload"
    printf 'Package: dt-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@test.invalid>\nDescription: debtorrent boot test\n' \
        >"$WORK/hello/DEBIAN/control"
    dpkg-deb -Znone --root-owner-group -b "$WORK/hello" "$repo/debian/pool/main/dt-hello_1.0_all.deb" >/dev/null
    (
        cd "$repo/debian" &&
            apt-ftparchive packages pool >dists/stable/main/binary-amd64/Packages &&
            gzip -k9 dists/stable/main/binary-amd64/Packages &&
            apt-ftparchive -o APT::FTPArchive::Release::Suite=stable -o APT::FTPArchive::Release::Codename=stable \
                -o APT::FTPArchive::Release::Components=main -o APT::FTPArchive::Release::Architectures=amd64 \
                release dists/stable >"$WORK/Release" && mv "$WORK/Release" dists/stable/Release
    ) || { bad "test repository"; return 1; }
    gpg --homedir "$gh" --batch --passphrase '' --quick-gen-key 'debtorrent boot test <t@test.invalid>' ed25519 sign never \
        >/dev/null 2>&1 &&
        gpg --homedir "$gh" --batch --clearsign -o "$repo/debian/dists/stable/InRelease" "$repo/debian/dists/stable/Release" &&
        mkdir -p "$tree/etc/apt/keyrings" &&
        gpg --homedir "$gh" --export >"$tree/etc/apt/keyrings/dt-test.gpg" || { bad "signing the test repository"; return 1; }
    echo "deb [signed-by=/etc/apt/keyrings/dt-test.gpg] http://127.0.0.1:$mport/debian stable main" \
        >"$tree/etc/apt/sources.list.d/test.list"
    cp "$DEB" "$tree/root/"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$tree/etc/hosts"

    # The network namespace: loopback only, multicast for LSD.
    ip netns add "$ns" || { bad "ip netns add"; return 1; }
    cleanup_nspawn() {
        [ -n "$nspawn_pid" ] && kill "$nspawn_pid" 2>/dev/null && wait "$nspawn_pid" 2>/dev/null
        [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null && wait "$peer_pid" 2>/dev/null
        [ -n "$mirror_pid" ] && kill "$mirror_pid" 2>/dev/null && wait "$mirror_pid" 2>/dev/null
        ip netns del "$ns" 2>/dev/null
        true
    }
    ip -n "$ns" link set lo up && ip -n "$ns" link set lo multicast on && ip -n "$ns" route add 239.0.0.0/8 dev lo ||
        { bad "netns loopback"; cleanup_nspawn; return 1; }
    ip netns exec "$ns" python3 -m http.server "$mport" --bind 127.0.0.1 --directory "$repo" \
        >"$WORK/nspawn-mirror.log" 2>&1 &
    mirror_pid=$!
    # Another debtorrent (the packaged binary) as the DHT node to meet.
    ip netns exec "$ns" "$R/usr/bin/debtorrent" serve --data-dir "$WORK/nspawn-peer" --listen 127.0.0.2:9988 \
        --peer-addr 127.0.0.2:6891 --dht-bootstrap none --no-lsd --log-level info \
        >"$WORK/nspawn-peer.log" 2>&1 &
    peer_pid=$!

    # Install the package before the boot (no systemd running: the
    # maintainer scripts enable the unit, nothing starts yet).
    if ! logged "$WORK/nspawn-dpkg.log" systemd-nspawn -q -D "$tree" --register=no --keep-unit --network-namespace-path="/run/netns/$ns" \
        dpkg -i "/root/$(basename "$DEB")"; then
        bad "dpkg -i debtorrent in the tree"
        cleanup_nspawn
        return 1
    fi
    ok "dpkg -i $(basename "$DEB") in a bookworm tree"
    # The test repository's port, and the DHT node to bootstrap from.
    printf '\n# boot test\nallow-port = [%s]\ndht-bootstrap = "127.0.0.2:6891"\n' "$mport" \
        >>"$tree/etc/debtorrent/debtorrent.toml"

    t0=$(date +%s)
    systemd-nspawn -D "$tree" --boot --register=no --keep-unit --console=passive -M "$ns" \
        --network-namespace-path="/run/netns/$ns" >"$WORK/nspawn-boot.log" 2>&1 &
    nspawn_pid=$!
    # The container's PID 1: the process named systemd below nspawn.
    local leader=
    for _ in $(seq 100); do
        for p in $(pgrep -P "$nspawn_pid") $(for c in $(pgrep -P "$nspawn_pid"); do pgrep -P "$c"; done); do
            [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && leader=$p && break 2
        done
        sleep 0.2
    done
    in_ct() { nsenter -t "$leader" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
    if [ -z "$leader" ]; then
        sed 's/^/    /' "$WORK/nspawn-boot.log" | tail -30
        bad "systemd-nspawn --boot: no systemd PID 1 found"
        cleanup_nspawn
        return 1
    fi
    # PID 1 may not listen on its private socket yet: ask again until it answers.
    local state=
    for _ in $(seq 100); do
        state=$(in_ct timeout 120 systemctl is-system-running --wait 2>/dev/null)
        [ -n "$state" ] && break
        sleep 0.3
    done
    secs=$(($(date +%s) - t0))
    case $state in
        running | degraded) ok "systemd booted as PID 1 in the container ($state, $secs s)" ;;
        *)
            sed 's/^/    /' "$WORK/nspawn-boot.log" | tail -30
            bad "systemd did not finish booting: '$state'"
            ;;
    esac
    [ "$state" = degraded ] && in_ct systemctl --failed --no-legend | sed 's/^/    failed unit: /'

    check "systemd started the enabled unit at boot" in_ct systemctl is-active --quiet debtorrent
    local st=
    for _ in $(seq 50); do
        st=$(in_ct debtorrent status --json 2>/dev/null) && break
        sleep 0.2
    done
    check "debtorrent status --json answers from inside" grep -q '"version"' <<<"$st"

    check "debtorrent sources --apply routes apt through the daemon" logged "$WORK/nspawn-apply.log" \
        in_ct debtorrent sources --apply
    check "apt-get update through the daemon (signature verified)" logged "$WORK/nspawn-update.log" \
        in_ct apt-get -q -o Acquire::Retries=0 update
    check "apt-get install dt-hello through the daemon" logged "$WORK/nspawn-install.log" \
        in_ct apt-get -q -y -o Acquire::Retries=0 install dt-hello
    check "the package came through the daemon" grep -q "localhost:9988" "$WORK/nspawn-install.log"
    check "store: the package is in /var/cache/debtorrent/store, owned by _debtorrent" \
        sh -c "find '$tree/var/cache/debtorrent/store' -name 'dt-hello_1.0_all.deb' | grep -q . &&
               [ \"\$(stat -c %U '$tree/var/cache/debtorrent/state.db' 2>/dev/null || true)\" != root ]"
    check "state: state.db written" test -s "$tree/var/cache/debtorrent/state.db"

    # Peer port, DHT and LSD under the sandbox (RestrictAddressFamilies,
    # SystemCallFilter, PrivateUsers): the DHT meets the node outside.
    local dht=0 js
    for _ in $(seq 60); do
        js=$(in_ct debtorrent status --json 2>/dev/null) || js=
        dht=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); print(((d.get("swarm") or {}).get("discovery") or {}).get("dht",{}).get("nodes",0))' <<<"$js" 2>/dev/null || echo 0)
        [ "${dht:-0}" -ge 1 ] && break
        sleep 0.5
    done
    check "DHT: the sandboxed daemon knows the outside node ($dht nodes)" test "${dht:-0}" -ge 1
    check "peer port: 0.0.0.0:6881 bound (TCP)" sh -c "grep -q ':1AE1 00000000:0000 0A' '/proc/$leader/net/tcp'"
    check "LSD on" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["swarm"]["discovery"]["lsd"] else 1)' "$js"
    check "debtorrent status prints the summary" sh -c "nsenter -t $leader -a -- debtorrent status | grep -q 'Peers saved the mirror'"

    local journal=$WORK/nspawn-journal.log
    in_ct journalctl -u debtorrent -o cat --no-pager >"$journal" 2>&1
    check "journal: one 'apt request' line per request, with sources and time" \
        grep -q 'apt request.*from_peers=.*from_mirror=.*from_store=.*ms=' "$journal"
    check "journal: plain text (no ESC bytes)" sh -c "! grep -q \$'\\x1b' '$journal'"
    check "journal: nothing refused by the sandbox" sh -c "! grep -Eiq 'operation not permitted|permission denied|bad system call' '$journal'"

    # Restart=on-failure: a SIGKILL brings it back after RestartSec (5 s).
    local pid1 pid2=
    pid1=$(in_ct systemctl show -p MainPID --value debtorrent)
    in_ct systemctl kill -s SIGKILL debtorrent
    for _ in $(seq 40); do
        sleep 0.5
        pid2=$(in_ct systemctl show -p MainPID --value debtorrent)
        [ -n "$pid2" ] && [ "$pid2" != 0 ] && [ "$pid2" != "$pid1" ] && break
    done
    check "restart on failure: SIGKILL, then running again (pid $pid1 -> $pid2)" \
        sh -c "[ -n '$pid2' ] && [ '$pid2' != 0 ] && [ '$pid2' != '$pid1' ]"
    for _ in $(seq 50); do in_ct debtorrent status --json >/dev/null 2>&1 && break; sleep 0.2; done
    check "the restarted daemon still has the package" sh -c "nsenter -t $leader -a -- debtorrent status | grep -Eq ' [1-9][0-9]* files'"

    # SIGTERM: systemctl stop returns well within TimeoutStopSec=30s, and
    # the daemon exited cleanly.
    t0=$(date +%s%N)
    in_ct systemctl stop debtorrent
    local ms=$((($(date +%s%N) - t0) / 1000000))
    local result
    result=$(in_ct systemctl show -p Result --value debtorrent)
    check "systemctl stop: SIGTERM ended it in $ms ms (limit 30 s), Result=$result" \
        sh -c "[ $ms -lt 30000 ] && [ '$result' = success ]"
    echo "    journal of debtorrent.service (last lines):"
    in_ct journalctl -u debtorrent -o short-monotonic --no-pager -n 8 2>&1 | sed 's/^/      /'

    in_ct systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    cleanup_nspawn
}

if [ "${SKIP_SYSTEMD_BOOT:-0}" = 1 ]; then
    echo "    skipped (SKIP_SYSTEMD_BOOT=1)"
else
    nspawn_test || true
fi
