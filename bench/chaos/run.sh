#!/usr/bin/env bash
# bench/chaos/run.sh — chaos test of a private swarm with real apt clients
# (issue 16, item 4). One command, bounded; every packet stays on loopback
# or inside network namespaces this script creates (and deletes at exit):
#   - a hub namespace with a bridge and the mirror (mirror.py: a signed
#     archive of small and multi-MB packages, faults switched at run time);
#   - $DAEMONS namespaces, each with a veth to the bridge, one daemon
#     (private DHT among them, no LSD) and one apt client looping
#     `apt-get update` + `apt-get install --download-only` of a random
#     subset, its archives emptied after each round;
#   - for $DURATION s: every ~$KILL_EVERY s a daemon is killed with SIGKILL
#     (one with a download in progress when there is one) and started again
#     $DOWN_MIN..$DOWN_MAX s later on the same data folder; delay and loss
#     on every packet entering a daemon namespace (tc netem, or where the
#     kernel has no sch_netem, NFQUEUE + linkdelay.py); the mirror stalls
#     or answers 500 for $FAULT_SECS s ($MIRROR_FAULTS).
# Checked and reported: every apt round ends with .debs whose SHA-256 is
# the archive's, or with a non-zero apt exit that a retry fixes (retried up
# to $RETRIES times); after a graceful stop, every file in every daemon's
# store/ hashes to what the archive says and agrees with state.db; a
# restart reports the same stored_pieces and cache_bytes as the files under
# store/; daemon logs are searched for corrupt data and storage errors.
#
# Usage: bench/chaos/run.sh     (root; builds target/release/debtorrent)
# Env:   DURATION=300 DAEMONS=6 KILL_EVERY=20 DOWN_MIN=3 DOWN_MAX=6
#        NETEM_DELAY_MS=100 NETEM_LOSS_PCT=5 NETEM_MODE=on|toggle|off
#        (toggle: NETEM_ON_SECS=40 on, NETEM_OFF_SECS=20 off, repeating)
#        NETEM_IMPL=auto|netem|nfqueue
#        MIRROR_FAULTS="stall 500" (in order, spread evenly over DURATION;
#        each word one of stall, 500) FAULT_SECS=15
#        RETRIES=3 APT_TIMEOUT=150 (per apt-get call) END_GRACE=300
#        SMALL_N=8 SMALL_MIN=20000 SMALL_MAX=400000 LARGE_N=6
#        LARGE_MIN=2000000 LARGE_MAX=8000000 LARGE_PCT=30 (chance of each
#        large package in a round; each small one has 1/2)
#        CACHE_SIZE=16M (each daemon's --cache-size: below the archive's
#        ~32 MB, so stores are pruned and rounds keep fetching)
#        SEED=n  LOG_LEVEL=info  SAMPLE_SECS=10  SUBNET=10.213.0
#        DEBTORRENT_BIN=path (else cargo build --release --locked)
#        KEEP=1 keeps the work folder (logs, apt roots, data folders)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/apt-root.sh
. "$HERE/../lib/apt-root.sh"
DURATION=${DURATION:-300}
DAEMONS=${DAEMONS:-6}
KILL_EVERY=${KILL_EVERY:-20}
DOWN_MIN=${DOWN_MIN:-3}
DOWN_MAX=${DOWN_MAX:-6}
NETEM_DELAY_MS=${NETEM_DELAY_MS:-100}
NETEM_LOSS_PCT=${NETEM_LOSS_PCT:-5}
NETEM_MODE=${NETEM_MODE:-on}
NETEM_ON_SECS=${NETEM_ON_SECS:-40}
NETEM_OFF_SECS=${NETEM_OFF_SECS:-20}
NETEM_IMPL=${NETEM_IMPL:-auto}
MIRROR_FAULTS=${MIRROR_FAULTS-stall 500}
FAULT_SECS=${FAULT_SECS:-15}
RETRIES=${RETRIES:-3}
APT_TIMEOUT=${APT_TIMEOUT:-150}
END_GRACE=${END_GRACE:-300}
SMALL_N=${SMALL_N:-8}
SMALL_MIN=${SMALL_MIN:-20000}
SMALL_MAX=${SMALL_MAX:-400000}
LARGE_N=${LARGE_N:-6}
LARGE_MIN=${LARGE_MIN:-2000000}
LARGE_MAX=${LARGE_MAX:-8000000}
LARGE_PCT=${LARGE_PCT:-30}
SEED=${SEED:-$$}
CACHE_SIZE=${CACHE_SIZE:-16M}
LOG_LEVEL=${LOG_LEVEL:-info}
SAMPLE_SECS=${SAMPLE_SECS:-10}
SUBNET=${SUBNET:-10.213.0}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

for v in DURATION DAEMONS KILL_EVERY DOWN_MIN DOWN_MAX NETEM_DELAY_MS NETEM_LOSS_PCT NETEM_ON_SECS NETEM_OFF_SECS \
    FAULT_SECS RETRIES APT_TIMEOUT END_GRACE SMALL_N SMALL_MIN SMALL_MAX LARGE_N LARGE_MIN LARGE_MAX LARGE_PCT SEED SAMPLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "chaos: $v=${!v} is not a whole number" >&2; exit 1; }
done
[ "$DAEMONS" -ge 2 ] && [ "$DAEMONS" -le 40 ] || { echo "chaos: DAEMONS must be 2..40" >&2; exit 1; }
[ "$DOWN_MIN" -le "$DOWN_MAX" ] || { echo "chaos: DOWN_MIN > DOWN_MAX" >&2; exit 1; }
[ "$KILL_EVERY" -ge 1 ] && [ "$SAMPLE_SECS" -ge 1 ] || { echo "chaos: KILL_EVERY and SAMPLE_SECS must be >= 1" >&2; exit 1; }
[ $((SMALL_N + LARGE_N)) -ge 1 ] || { echo "chaos: no packages (SMALL_N + LARGE_N = 0)" >&2; exit 1; }
case $NETEM_MODE in on | toggle | off) ;; *) echo "chaos: NETEM_MODE must be on, toggle or off" >&2; exit 1 ;; esac
case $NETEM_IMPL in auto | netem | nfqueue) ;; *) echo "chaos: NETEM_IMPL must be auto, netem or nfqueue" >&2; exit 1 ;; esac
for f in $MIRROR_FAULTS; do case $f in stall | 500) ;; *) echo "chaos: MIRROR_FAULTS: $f is not stall or 500" >&2; exit 1 ;; esac; done
[[ $CACHE_SIZE =~ ^[0-9]+[KMGT]?$ ]] || { echo "chaos: CACHE_SIZE must look like 16M" >&2; exit 1; }
[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "chaos: SUBNET must look like 10.213.0" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "chaos: needs root (network namespaces)" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || { echo "chaos: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need ip iproute2
need tc iproute2
need apt-get apt
need gpg gnupg
need gpgconf gnupg
need gpgv gpgv
need curl curl
need jq jq
need openssl openssl
need sha256sum coreutils
need timeout coreutils
[ -n "$PY" ] || { echo "chaos: missing python3" >&2; exit 1; }

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/dt-chaos.XXXXXX)
chmod 755 "$WORK"
TAG="dtc$$"                  # names: namespaces, bridge, veths
HUB="${TAG}h"
NSS=()                       # namespaces created (deleted at exit)
PIDS=()                      # mirror, link delayers, daemons
CPIDS=()                     # client loops
GNUPGHOME_USED=
declare -A DPID LIFE STARTED
cleanup() {
    local p f i alive ns
    set +e
    : >"$WORK/stop"
    for p in "${CPIDS[@]}"; do kill "$p" 2>/dev/null; done
    for f in "$WORK"/c/*/cur.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f" 2>/dev/null)
        [ -n "$p" ] && kill -- "-$p" 2>/dev/null
    done
    for p in "${DPID[@]}" "${PIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    for i in $(seq 1 100); do
        alive=0
        for p in "${DPID[@]}" "${PIDS[@]}" "${CPIDS[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${DPID[@]}" "${PIDS[@]}" "${CPIDS[@]}"; do [ -n "$p" ] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
    if [ -n "$GNUPGHOME_USED" ]; then GNUPGHOME="$GNUPGHOME_USED" gpgconf --kill all 2>/dev/null; fi
    # Deleting a namespace removes its veth end, and so the pair; the
    # bridge lives in the hub namespace.
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "chaos: kept $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "chaos: [$((EPOCHSECONDS - T_START))s] $*" >&2; }
# unpid PID: reaped; never signal that number again.
unpid() {
    local i
    for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" != "$1" ] || unset 'PIDS[i]'; done
}
NOTES=()
note() { NOTES+=("$*"); log "NOTE: $*"; }

# ------------------------------------------------------------ binary
if [ -z "${DEBTORRENT_BIN:-}" ]; then
    log "building target/release/debtorrent (cargo build --release --locked)"
    ok=0
    for attempt in 1 2 3; do
        if (cd "$TOP" && cargo build -q --release --locked); then ok=1; break; fi
        [ "$attempt" = 3 ] || { log "build failed (attempt $attempt); again in 60 s"; sleep 60; }
    done
    [ "$ok" = 1 ] || { echo "chaos: cargo build failed 3 times" >&2; exit 1; }
    DEBTORRENT_BIN="$TOP/target/release/debtorrent"
fi
[ -x "$DEBTORRENT_BIN" ] || { echo "chaos: $DEBTORRENT_BIN is not an executable" >&2; exit 1; }
# A private copy: a rebuild by someone else during the run changes nothing.
cp "$DEBTORRENT_BIN" "$WORK/debtorrent"
BIN="$WORK/debtorrent"
BIN_INFO="$DEBTORRENT_BIN (sha256 $(sha256sum "$BIN" | cut -c1-12), built $(date -u -r "$DEBTORRENT_BIN" +%FT%TZ))"

# ------------------------------------------------------------ archive
log "building the signed archive: $SMALL_N packages of $SMALL_MIN..$SMALL_MAX bytes, $LARGE_N of $LARGE_MIN..$LARGE_MAX"
REPO="$WORK/repo"
"$PY" "$HERE/mkrepo.py" "$REPO" "$SMALL_N" "$SMALL_MIN" "$SMALL_MAX" "$LARGE_N" "$LARGE_MIN" "$LARGE_MAX" "$SEED"
export GNUPGHOME="$WORK/gnupg"
mkdir -p "$GNUPGHOME"
chmod 700 "$GNUPGHOME"
GNUPGHOME_USED=$GNUPGHOME
UID_STR="debtorrent chaos archive key <chaos@example.invalid>"
gpg -q --batch --yes --passphrase '' --quick-gen-key "$UID_STR" ed25519 sign never 2>"$WORK/gpg.log"
gpg -q --batch --yes --local-user "$UID_STR" --clearsign -o "$REPO/dists/chaos/InRelease" "$REPO/dists/chaos/Release" 2>>"$WORK/gpg.log"
gpg -q --batch --yes --local-user "$UID_STR" --armor --detach-sign -o "$REPO/dists/chaos/Release.gpg" "$REPO/dists/chaos/Release" 2>>"$WORK/gpg.log"
KEYRING="$WORK/archive-keyring.gpg"
gpg -q --batch --yes --export --output "$KEYRING" 2>>"$WORK/gpg.log"
gpgconf --kill all 2>/dev/null || true
GNUPGHOME_USED=
unset GNUPGHOME
[ -s "$KEYRING" ] || { echo "chaos: gpg made no keyring ($(head -c 300 "$WORK/gpg.log"))" >&2; exit 1; }
PKG_NAMES=()
PKG_KIND=()
while read -r name _ _ _; do PKG_NAMES+=("$name"); PKG_KIND+=("${name:0:5}"); done <"$REPO/chaos.files"
REPO_BYTES=$(awk '{s+=$2} END {print s}' "$REPO/chaos.files")

# ------------------------------------------------------------ network
# hub namespace: bridge $TAG"br" with $SUBNET.1/24, the mirror on it.
# daemon k: namespace $TAG"d"k, veth $TAG"e"k (its end, $SUBNET.(10+k)) to
# $TAG"v"k (the hub's end, on the bridge).
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
DNS() { echo "${TAG}d$1"; }
DIP() { echo "$SUBNET.$((10 + $1))"; }
log "network: hub namespace $HUB, bridge ${TAG}br, $DAEMONS daemon namespaces on $SUBNET.0/24"
ip netns add "$HUB"
NSS+=("$HUB")
ip -n "$HUB" link set lo up
ip -n "$HUB" link add "${TAG}br" type bridge
ip -n "$HUB" addr add "$SUBNET.1/24" dev "${TAG}br"
ip -n "$HUB" link set "${TAG}br" up
for k in $(seq 1 "$DAEMONS"); do
    ns=$(DNS "$k")
    ip netns add "$ns"
    NSS+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$HUB" link add "${TAG}v$k" type veth peer name "${TAG}e$k" netns "$ns"
    ip -n "$HUB" link set "${TAG}v$k" master "${TAG}br"
    ip -n "$HUB" link set "${TAG}v$k" up
    ip -n "$ns" addr add "$(DIP "$k")/24" dev "${TAG}e$k"
    ip -n "$ns" link set "${TAG}e$k" up
done

# Delay and loss on the packets entering each daemon namespace: tc netem
# on its veth's hub end (egress towards the daemon), or, where the kernel
# has no sch_netem, an NFQUEUE rule on the namespace's INPUT and
# linkdelay.py doing the same in user space.
IMPL=$NETEM_IMPL
NETEM_WHY="NETEM_IMPL=$NETEM_IMPL"
NETEM_SWITCHES=0
if [ "$IMPL" = auto ] || [ "$IMPL" = netem ]; then
    if nsx "$HUB" tc qdisc add dev lo root netem delay 1ms 2>"$WORK/netem.err"; then
        nsx "$HUB" tc qdisc del dev lo root 2>/dev/null || true
        IMPL=netem
    elif [ "$IMPL" = netem ]; then
        echo "chaos: tc netem does not work here: $(cat "$WORK/netem.err")" >&2
        exit 1
    else
        IMPL=nfqueue
        NETEM_WHY="tc netem: $(head -c 120 "$WORK/netem.err" | tr '\n' ' ')"
    fi
fi
if [ "$IMPL" = nfqueue ] && [ "$NETEM_MODE" != off ]; then
    if ! command -v iptables >/dev/null 2>&1; then
        log "installing iptables (NFQUEUE rules inside the namespaces; the host's rules are not touched)"
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get install -y -q iptables >/dev/null 2>&1 ||
            { timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q iptables >/dev/null 2>&1; } ||
            { echo "chaos: no tc netem and cannot install iptables (NETEM_MODE=off runs without delay/loss)" >&2; exit 1; }
    fi
    for k in $(seq 1 "$DAEMONS"); do
        ip netns exec "$(DNS "$k")" "$PY" "$HERE/linkdelay.py" 0 "$NETEM_DELAY_MS" "$NETEM_LOSS_PCT" "$((SEED + k))" \
            >"$WORK/linkdelay$k.log" 2>&1 &
        PIDS+=($!)
    done
fi
NETEM_STATE=off
netem_set() { # on|off
    local k ns
    [ "$NETEM_MODE" != off ] || return 0
    [ "$1" != "$NETEM_STATE" ] || return 0
    for k in $(seq 1 "$DAEMONS"); do
        ns=$(DNS "$k")
        if [ "$IMPL" = netem ]; then
            if [ "$1" = on ]; then
                nsx "$HUB" tc qdisc replace dev "${TAG}v$k" root netem delay "${NETEM_DELAY_MS}ms" loss "${NETEM_LOSS_PCT}%" limit 10000
            else
                nsx "$HUB" tc qdisc del dev "${TAG}v$k" root 2>/dev/null || true
            fi
        else
            if [ "$1" = on ]; then
                nsx "$ns" iptables -A INPUT -i "${TAG}e$k" -j NFQUEUE --queue-num 0 --queue-bypass
            else
                nsx "$ns" iptables -D INPUT -i "${TAG}e$k" -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null || true
            fi
        fi
    done
    NETEM_STATE=$1
    NETEM_SWITCHES=$((NETEM_SWITCHES + 1))
    log "delay ${NETEM_DELAY_MS} ms + loss ${NETEM_LOSS_PCT}% on the daemons' links: $1 ($IMPL)"
}

# ------------------------------------------------------------ mirror
MIRROR="$SUBNET.1:8080"
MCTL="$WORK/mirror.control"
MLOG="$WORK/mirror.log"
echo ok >"$MCTL"
: >"$MLOG"
ip netns exec "$HUB" "$PY" "$HERE/mirror.py" "$REPO" "$SUBNET.1" 8080 "$MCTL" "$MLOG" >"$WORK/mirror.err" 2>&1 &
PIDS+=($!)
for i in $(seq 1 100); do
    nsx "$HUB" curl -s -o /dev/null -m 2 "http://$MIRROR/debian/dists/chaos/InRelease" && break
    sleep 0.1
done
nsx "$(DNS 1)" curl -s -o /dev/null -m 5 "http://$MIRROR/debian/dists/chaos/InRelease" ||
    { echo "chaos: the mirror is not reachable from $(DNS 1): $(head -c 300 "$WORK/mirror.err")" >&2; exit 1; }
log "mirror (mirror.py) on http://$MIRROR/debian/ in $HUB"

# ------------------------------------------------------------ daemons
# Each daemon: apt front end on 127.0.0.1:9988 of its namespace, peers and
# DHT on $SUBNET.(10+k):6881. First start: d1 starts the DHT, dk
# bootstraps from d1. A restart bootstraps from all the others.
status() { nsx "$(DNS "$1")" curl -s --max-time 5 http://127.0.0.1:9988/status.json; }
up() { nsx "$(DNS "$1")" curl -s -o /dev/null --max-time 2 http://127.0.0.1:9988/status.json; }
start_daemon() { # K BOOTSTRAP
    local k=$1 boot=$2 d="$WORK/d/$1"
    mkdir -p "$d/data"
    echo "=== start $(date -u +%T) bootstrap $boot" >>"$d/log"
    # ip netns exec execs the daemon: $! is the daemon itself (a shell
    # function in the background would be a subshell around it).
    ip netns exec "$(DNS "$k")" "$BIN" serve --listen 127.0.0.1:9988 --data-dir "$d/data" --peer-addr "$(DIP "$k"):6881" \
        --dht-bootstrap "$boot" --no-lsd --allow-port 8080 --cache-size "$CACHE_SIZE" --log-level "$LOG_LEVEL" >>"$d/log" 2>&1 &
    DPID[$k]=$!
    LIFE[$k]=$((${LIFE[$k]:-0} + 1))
    STARTED[$k]=$EPOCHSECONDS
}
wait_up() { # K SECONDS
    local i
    for i in $(seq 1 $(($2 * 5))); do
        up "$1" && return 0
        kill -0 "${DPID[$1]}" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
others() { local k j out=; for j in $(seq 1 "$DAEMONS"); do [ "$j" = "$1" ] || out+="${out:+,}$(DIP "$j"):6881"; done; echo "$out"; }
# stop_daemon K SECONDS: SIGTERM; STOPPED="ok in S s, exit status N", or
# "KILLED" when still alive after SECONDS (then SIGKILL). Not in a
# subshell: only this shell can wait for its children.
stop_daemon() {
    local k=$1 p=${DPID[$1]} i t0=$EPOCHREALTIME rc st
    [ -n "$p" ] || { STOPPED="not running"; return 0; }
    kill "$p" 2>/dev/null || true
    # Exited = its /proc entry is gone (reaped) or a zombie, read in ONE
    # look (kill -0 then ps races with bash reaping it in between).
    st=R
    for i in $(seq 1 $(($2 * 20))); do
        st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || true)
        case $st in "" | Z) break ;; esac
        sleep 0.05
    done
    if [ -n "$st" ] && [ "$st" != Z ]; then
        # Evidence first: its threads (name, state, kernel wait channel).
        {
            echo "=== SIGTERM: still running after $2 s; threads (name state wchan):"
            for t in /proc/"$p"/task/*; do
                echo "    $(cat "$t/comm" 2>/dev/null) $(awk '{print $3}' "$t/stat" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)"
            done | sort | uniq -c
            if command -v gdb >/dev/null 2>&1; then
                echo "=== gdb: thread apply all bt"
                timeout 60 gdb -p "$p" -batch -ex "thread apply all bt" 2>&1 | grep -E '^(Thread|#)' | cut -c1-200
            fi
        } >>"$WORK/d/$k/log" 2>/dev/null
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        DPID[$k]=
        STOPPED="KILLED (alive $2 s after SIGTERM)"
        echo "=== SIGTERM: still running after $2 s, SIGKILL $(date -u +%T)" >>"$WORK/d/$k/log"
        return 0
    fi
    rc=0
    wait "$p" 2>/dev/null || rc=$?
    DPID[$k]=
    STOPPED="ok in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b-a}') s, exit status $rc"
    echo "=== stopped (SIGTERM) $(date -u +%T): $STOPPED" >>"$WORK/d/$k/log"
}
mkdir -p "$WORK/status"
# snap K TAG: one line of the daemon's counters into status/K.jsonl.
snap() {
    local st
    st=$(status "$1" 2>/dev/null) || return 0
    jq -c --arg tag "$2" --argjson t "$EPOCHSECONDS" --argjson life "${LIFE[$1]}" '{t: $t, tag: $tag, life: $life, uptime: .uptime_seconds,
        stored_pieces, cache_bytes, bytes_uploaded, bytes_from_peers, bytes_from_mirror, bytes_to_apt,
        corrupt_downloads, bans, requests, store_hits,
        conns: (.swarm.connections // null), dht_nodes: (.swarm.discovery.dht.nodes // null)}' \
        <<<"$st" >>"$WORK/status/$1.jsonl" 2>/dev/null || true
}

log "starting $DAEMONS daemons"
start_daemon 1 none
wait_up 1 20 || { echo "chaos: daemon 1 did not start: $(tail -5 "$WORK/d/1/log")" >&2; exit 1; }
for k in $(seq 2 "$DAEMONS"); do start_daemon "$k" "$(DIP 1):6881"; done
for k in $(seq 2 "$DAEMONS"); do
    wait_up "$k" 20 || { echo "chaos: daemon $k did not start: $(tail -5 "$WORK/d/$k/log")" >&2; exit 1; }
done

# ------------------------------------------------------------ apt clients
mk_client() {
    local r="$WORK/c/$1"
    apt_root "$r"
    printf 'deb [signed-by=%s] http://127.0.0.1:9988/%s/debian chaos main\n' "$KEYRING" "$MIRROR" >"$r/etc/apt/sources.list"
}
# apt_call K OUT ARGS...: apt-get in daemon K's namespace under timeout
# (its own process group, noted in cur.pid for cleanup); returns its status.
apt_call() {
    local k=$1 out=$2 r="$WORK/c/$1" tp rc
    shift 2
    ip netns exec "$(DNS "$k")" env -i PATH="$PATH" LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive \
        APT_CONFIG="$r/apt.conf" timeout "$APT_TIMEOUT" apt-get -q -y "$@" >"$out" 2>&1 </dev/null &
    tp=$!
    echo "$tp" >"$r/cur.pid"
    wait "$tp"
    rc=$?
    : >"$r/cur.pid"
    return "$rc"
}
# check_debs K: every .deb in K's archives against the archive's SHA256;
# prints "debs bad" and logs each mismatch to bad-debs.
check_debs() {
    local r="$WORK/c/$1" f n=0 bad=0 want got
    for f in "$r"/var/cache/apt/archives/*.deb; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        want=$(awk -v b="$(basename "$f")" '{ p = $4; sub(/.*\//, "", p) } p == b {print $3}' "$REPO/chaos.files")
        got=$(sha256sum "$f" | cut -d' ' -f1)
        if [ "$want" != "$got" ]; then
            bad=$((bad + 1))
            echo "$(date -u +%T) client $1: $(basename "$f") sha256 $got, the archive says ${want:-nothing}" >>"$WORK/bad-debs"
            cp "$f" "$WORK/bad-debs.$1.$(basename "$f").$EPOCHSECONDS" 2>/dev/null || true
        fi
    done
    echo "$n $bad"
}
# client_loop K END: rounds until END (epoch s) or the stop file. A round:
# update, install --download-only of a random subset, check the .debs; on
# a failure, wait for the daemon, then the whole round again (the archives
# keep what apt already verified), at most RETRIES times. One line per
# attempt in results:
#   client round attempt start seconds step rc npkgs debs bad_debs
# and the first error lines of each failed attempt in failures.
client_loop() {
    local k=$1 end=$2 r="$WORK/c/$1" round=0 attempt pkgs n i t0 step rc debs bad
    set +e
    RANDOM=$(((SEED * 7919 + k * 104729) % 32768))
    while [ "$EPOCHSECONDS" -lt "$end" ] && [ ! -e "$WORK/stop" ]; do
        round=$((round + 1))
        pkgs=()
        for i in "${!PKG_NAMES[@]}"; do
            if [ "${PKG_KIND[$i]}" = large ]; then
                [ $((RANDOM % 100)) -lt "$LARGE_PCT" ] && pkgs+=("${PKG_NAMES[$i]}")
            else
                [ $((RANDOM % 2)) = 1 ] && pkgs+=("${PKG_NAMES[$i]}")
            fi
        done
        [ "${#pkgs[@]}" -gt 0 ] || pkgs=("${PKG_NAMES[$((RANDOM % ${#PKG_NAMES[@]}))]}")
        n=${#pkgs[@]}
        attempt=0
        while :; do
            attempt=$((attempt + 1))
            t0=$EPOCHREALTIME
            step=update
            echo update >"$r/phase"
            apt_call "$k" "$r/out.update" update
            rc=$?
            if [ "$rc" = 0 ]; then
                step=install
                echo install >"$r/phase"
                apt_call "$k" "$r/out.install" install --download-only "${pkgs[@]}"
                rc=$?
            fi
            echo idle >"$r/phase"
            read -r debs bad < <(check_debs "$k")
            [ "$rc" = 0 ] && [ "$debs" != "$n" ] && rc="debs"
            echo "$k $round $attempt ${t0%.*} $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b-a}') $step $rc $n $debs $bad" >>"$r/results"
            if [ "$rc" != 0 ]; then
                {
                    echo "client $k round $round attempt $attempt at +$((${t0%.*} - T_RUN))s: $step failed (rc $rc)"
                    if grep -qE '^(E:|W:|Err:)' "$r/out.$step"; then
                        { grep -E '^(E:|W:)' "$r/out.$step" | head -5; grep -E '^Err:' "$r/out.$step" | head -2; } | sed 's/^/  /'
                    else
                        tail -3 "$r/out.$step" | sed 's/^/  /'
                    fi
                } >>"$r/failures"
            fi
            [ "$rc" = 0 ] && break
            [ "$attempt" -le "$RETRIES" ] || break
            # The daemon may be down (killed): wait for it, at most 60 s;
            # then back off 5, 10, 20 ... s (a mirror fault lasts a while).
            for i in $(seq 1 60); do up "$k" && break; sleep 1; done
            sleep $((5 << (attempt - 1)))
        done
        rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/archives/partial/*
        sleep $((1 + RANDOM % 2))
    done
}

# ------------------------------------------------------------ the run
for k in $(seq 1 "$DAEMONS"); do mk_client "$k"; done
[ "$NETEM_MODE" = off ] || netem_set on
T_RUN=$EPOCHSECONDS
END=$((T_RUN + DURATION))
LOAD_RUN_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "clients start: $DURATION s of rounds, a kill every ~$KILL_EVERY s, mirror faults: ${MIRROR_FAULTS:-none}"
for k in $(seq 1 "$DAEMONS"); do
    client_loop "$k" "$END" &
    CPIDS+=($!)
done

RANDOM=$((SEED % 32768))
KILLS=0 KILLS_MID=0 RESTARTS=0 NOT_BACK=0
KILL_LOG=()
DOWN_K= DOWN_UNTIL=0
NEXT_KILL=$((T_RUN + KILL_EVERY))
NEXT_SAMPLE=$T_RUN
NEXT_NETEM=$((T_RUN + NETEM_ON_SECS))
FAULTS=($MIRROR_FAULTS)
NF=${#FAULTS[@]}
FAULT_AT=()
for i in $(seq 1 "$NF"); do FAULT_AT+=($((T_RUN + DURATION * i / (NF + 1)))); done
FAULT_I=0 FAULT_END=0
FAULT_LOG=()
# fresh K: the daemon we started last answers /status.json, alive, with
# an uptime no older than its start (not some other process on the port).
fresh() {
    local k=$1 upt
    wait_up "$k" 30 || return 1
    kill -0 "${DPID[$k]}" 2>/dev/null || return 1
    upt=$(status "$k" | jq -r '.uptime_seconds // 999999' 2>/dev/null || echo 999999)
    [ "$upt" -le $((EPOCHSECONDS - STARTED[$k] + 2)) ]
}
restart() { # K: start again on the same data folder
    local k=$1
    start_daemon "$k" "$(others "$k")"
    if fresh "$k"; then
        RESTARTS=$((RESTARTS + 1))
    else
        NOT_BACK=$((NOT_BACK + 1))
        note "daemon $k did not come back within 30 s of its restart (pid ${DPID[$k]} $(kill -0 "${DPID[$k]}" 2>/dev/null && echo alive || echo gone)); log tail: $(tail -3 "$WORK/d/$k/log" | tr '\n' '|')"
        kill -9 "${DPID[$k]}" 2>/dev/null || true
        wait "${DPID[$k]}" 2>/dev/null || true
        start_daemon "$k" "$(others "$k")"
        fresh "$k" && RESTARTS=$((RESTARTS + 1))
    fi
}
while [ "$EPOCHSECONDS" -lt "$END" ]; do
    sleep 1
    now=$EPOCHSECONDS
    # Samples of every running daemon's counters.
    if [ "$now" -ge "$NEXT_SAMPLE" ]; then
        for k in $(seq 1 "$DAEMONS"); do [ "$k" = "$DOWN_K" ] || snap "$k" sample; done
        NEXT_SAMPLE=$((now + SAMPLE_SECS))
    fi
    # A killed daemon comes back.
    if [ -n "$DOWN_K" ] && [ "$now" -ge "$DOWN_UNTIL" ]; then
        restart "$DOWN_K"
        log "daemon $DOWN_K restarted"
        DOWN_K=
    fi
    # The next kill: a daemon with a download in progress (files in its
    # tmp/), waiting up to 5 s for one; else any.
    if [ -z "$DOWN_K" ] && [ "$now" -ge "$NEXT_KILL" ]; then
        busy=()
        for k in $(seq 1 "$DAEMONS"); do
            [ -n "$(ls -A "$WORK/d/$k/data/tmp" 2>/dev/null)" ] && busy+=("$k")
        done
        if [ "${#busy[@]}" -gt 0 ] || [ "$now" -ge $((NEXT_KILL + 5)) ]; then
            if [ "${#busy[@]}" -gt 0 ]; then
                v=${busy[$((RANDOM % ${#busy[@]}))]}
                mid=yes
                KILLS_MID=$((KILLS_MID + 1))
            else
                v=$((1 + RANDOM % DAEMONS))
                mid=no
            fi
            snap "$v" prekill
            tmpn=$(ls -A "$WORK/d/$v/data/tmp" 2>/dev/null | wc -l)
            aptph=$(cat "$WORK/c/$v/phase" 2>/dev/null || echo "?")
            [ "$(readlink "/proc/${DPID[$v]}/exe" 2>/dev/null)" = "$BIN" ] ||
                note "daemon $v: pid ${DPID[$v]} is not the daemon ($(readlink "/proc/${DPID[$v]}/exe" 2>/dev/null || echo gone)) at its kill"
            kill -9 "${DPID[$v]}" 2>/dev/null || true
            wait "${DPID[$v]}" 2>/dev/null || true
            echo "=== killed (SIGKILL) $(date -u +%T)" >>"$WORK/d/$v/log"
            DPID[$v]=
            KILLS=$((KILLS + 1))
            echo "$now $v" >>"$WORK/kills"
            down=$((DOWN_MIN + RANDOM % (DOWN_MAX - DOWN_MIN + 1)))
            DOWN_K=$v
            DOWN_UNTIL=$((now + down))
            KILL_LOG+=("+$((now - T_RUN))s d$v (downloads in progress: $tmpn tmp files; its apt: $aptph) down ${down}s")
            log "killed daemon $v (SIGKILL; mid-transfer: $mid, $tmpn tmp files); restart in $down s"
            NEXT_KILL=$((now + KILL_EVERY))
        fi
    fi
    # Delay/loss toggling.
    if [ "$NETEM_MODE" = toggle ] && [ "$now" -ge "$NEXT_NETEM" ]; then
        if [ "$NETEM_STATE" = on ]; then
            netem_set off
            NEXT_NETEM=$((now + NETEM_OFF_SECS))
        else
            netem_set on
            NEXT_NETEM=$((now + NETEM_ON_SECS))
        fi
    fi
    # Mirror faults.
    if [ "$FAULT_END" -gt 0 ] && [ "$now" -ge "$FAULT_END" ]; then
        echo ok >"$MCTL"
        FAULT_END=0
        log "mirror: ok again"
    fi
    if [ "$FAULT_I" -lt "$NF" ] && [ "$FAULT_END" = 0 ] && [ "$now" -ge "${FAULT_AT[$FAULT_I]}" ]; then
        echo "${FAULTS[$FAULT_I]}" >"$MCTL"
        FAULT_END=$((now + FAULT_SECS))
        echo "$now $FAULT_END ${FAULTS[$FAULT_I]}" >>"$WORK/faults"
        FAULT_LOG+=("${FAULTS[$FAULT_I]} at +$((now - T_RUN))s for ${FAULT_SECS}s")
        log "mirror: ${FAULTS[$FAULT_I]} for $FAULT_SECS s"
        FAULT_I=$((FAULT_I + 1))
    fi
done
T_CHAOS_END=$EPOCHSECONDS
echo ok >"$MCTL"
[ -z "$DOWN_K" ] || { restart "$DOWN_K"; DOWN_K=; }
: >"$WORK/stop"
LOAD_RUN_END=$(cut -d' ' -f1-3 /proc/loadavg)
log "chaos over; the clients finish their rounds (at most $END_GRACE s)"
for i in $(seq 1 "$END_GRACE"); do
    alive=0
    for p in "${CPIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 1
done
CUT=0
for p in "${CPIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then CUT=$((CUT + 1)); kill "$p" 2>/dev/null; fi
done
for f in "$WORK"/c/*/cur.pid; do p=$(cat "$f" 2>/dev/null); [ -n "$p" ] && kill -- "-$p" 2>/dev/null; done
for p in "${CPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
CPIDS=()
[ "$CUT" = 0 ] || note "$CUT client loops still running $END_GRACE s after the end were stopped (their last round is not counted as failed)"
T_CLIENTS_END=$EPOCHSECONDS
netem_set off

# ------------------------------------------------------------ final checks
log "final checks: graceful stop, store vs archive and state.db, restart, status vs store"
declare -A STOP1 STOP2 VER1 VER2 RESTART_CMP
for k in $(seq 1 "$DAEMONS"); do snap "$k" final; done
for k in $(seq 1 "$DAEMONS"); do
    stop_daemon "$k" 15
    STOP1[$k]=$STOPPED
    [ "${STOP1[$k]%% *}" = ok ] || note "daemon $k did not stop within 15 s of SIGTERM (${STOP1[$k]})"
done
for k in $(seq 1 "$DAEMONS"); do
    "$PY" "$HERE/verify.py" "$WORK/d/$k/data" "$REPO" >"$WORK/verify1.$k" 2>&1 || echo "verify.py failed" >>"$WORK/verify1.$k"
    VER1[$k]=$(head -1 "$WORK/verify1.$k")
done
for k in $(seq 1 "$DAEMONS"); do start_daemon "$k" "$(others "$k")"; done
for k in $(seq 1 "$DAEMONS"); do
    if ! fresh "$k"; then
        RESTART_CMP[$k]="did not come back within 30 s"
        note "daemon $k did not come back after the final restart; log tail: $(tail -3 "$WORK/d/$k/log" | tr '\n' '|')"
        continue
    fi
    # stored_pieces and cache_bytes once two reads 1 s apart agree (a file
    # without a row is hashed again at start), at most 20 s.
    prev= cur=
    for i in $(seq 1 20); do
        cur=$(status "$k" | jq -r '"\(.stored_pieces) \(.cache_bytes)"' 2>/dev/null || true)
        [ -n "$cur" ] && [ "$cur" = "$prev" ] && break
        prev=$cur
        sleep 1
    done
    read -r sp cb <<<"$cur"
    fn=$(sed -E 's/.*\bfiles=([0-9]+).*/\1/' <<<"${VER1[$k]}")
    fb=$(sed -E 's/.*\bbytes=([0-9]+).*/\1/' <<<"${VER1[$k]}")
    if [ "$sp" = "$fn" ] && [ "$cb" = "$fb" ]; then
        RESTART_CMP[$k]="agree: stored_pieces $sp = files, cache_bytes $cb = bytes"
    else
        RESTART_CMP[$k]="DIFFER: stored_pieces $sp vs $fn files, cache_bytes $cb vs $fb bytes under store/"
        note "daemon $k after restart: ${RESTART_CMP[$k]}"
    fi
    snap "$k" restarted
done
for k in $(seq 1 "$DAEMONS"); do
    stop_daemon "$k" 15
    STOP2[$k]=$STOPPED
    [ "${STOP2[$k]%% *}" = ok ] || note "daemon $k did not stop within 15 s of SIGTERM after the final restart (${STOP2[$k]})"
    "$PY" "$HERE/verify.py" "$WORK/d/$k/data" "$REPO" >"$WORK/verify2.$k" 2>&1 || echo "verify.py failed" >>"$WORK/verify2.$k"
    VER2[$k]=$(head -1 "$WORK/verify2.$k")
done

# ------------------------------------------------------------ report
set +e +o pipefail
RESULTS="$WORK/results"
cat "$WORK"/c/*/results >"$RESULTS" 2>/dev/null
# per round: its last attempt decides
ROUNDS=$(awk '{print $1, $2}' "$RESULTS" | sort -u | grep -c .)
ATTEMPTS=$(grep -c . "$RESULTS")
FIRST_OK=$(awk '$3 == 1 && $7 == "0"' "$RESULTS" | grep -c .)
FAILED_ROUNDS=$(awk '$3 == 1 && $7 != "0"' "$RESULTS" | grep -c .)
FAILED_ATTEMPTS=$(awk '$7 != "0"' "$RESULTS" | grep -c .)
FIXED=$(awk '$3 > 1 && $7 == "0"' "$RESULTS" | grep -c .)
FIXED_BY=$(awk '$3 > 1 && $7 == "0" {n[$3 - 1]++} END { for (k in n) printf "%s%d after %d retr%s", (c++ ? ", " : ""), n[k], k, (k == 1 ? "y" : "ies") }' "$RESULTS")
UNRESOLVED=$(awk '{last[$1 " " $2] = $7} END { for (k in last) if (last[k] != "0") n++; print n+0 }' "$RESULTS")
TIMEOUTS=$(awk '$7 == "124"' "$RESULTS" | grep -c .)
BAD_DEBS=$(awk '{s += $10} END {print s+0}' "$RESULTS")
GOOD_DEBS=$(awk '{s += $9 - $10} END {print s+0}' "$RESULTS")
BYSTEP=$(awk '$7 != "0" {s[$6 " rc " $7]++} END { for (k in s) printf "%s%s x%d", (n++ ? ", " : ""), k, s[k] }' "$RESULTS")
OKSECS=$(awk '$7 == "0" {print $5}' "$RESULTS" | sort -g |
    awk '{a[NR] = $1} END { if (NR == 0) print "n/a"; else printf "median %.1f, p95 %.1f, max %.1f", a[int((NR+1)/2)], a[int(NR*0.95+0.999)], a[NR] }')
PER_CLIENT=$(awk '{print $1, $2}' "$RESULTS" | sort -u | awk '{n[$1]++} END { for (k in n) printf "%sd%s %d", (c++ ? ", " : ""), k, n[k] }')
ERRLINES=$(cat "$WORK"/c/*/failures 2>/dev/null | grep -E '^ +(E|W):' |
    sed -E -e 's/^ +//' -e "s#$WORK#WORK#g" -e 's#http://[^ ]*/pool/[^ ]*/(small|large)[0-9]+_[^ ]*\.deb#.../pool/\1NN.deb#' -e 's/[0-9]+ B\/[0-9]+ B/N B\/N B/g' |
    sort | uniq -c | sort -rn | head -10 | sed 's/^/    /')
# Each failed attempt, by what was going on: its own daemon was killed
# during it; else a mirror fault overlapped it (or ended < 5 s before it
# began); else "other" (a peer killed mid-transfer, delay/loss, ...).
touch "$WORK/kills" "$WORK/faults"
CAUSES=$(awk -v K="$WORK/kills" -v F="$WORK/faults" '
    BEGIN { while ((getline l < K) > 0) { split(l, a, " "); kt[++nk] = a[1]; kd[nk] = a[2] }
            while ((getline l < F) > 0) { split(l, a, " "); fs[++nf] = a[1]; fe[nf] = a[2]; fw[nf] = a[3] } }
    $7 != "0" { s = $4; e = $4 + $5 + 1; c = "other"
        for (i = 1; i <= nk; i++) if (kd[i] == $1 && kt[i] >= s - 1 && kt[i] <= e) c = "own daemon killed"
        if (c == "other") for (i = 1; i <= nf; i++) if (fs[i] <= e && fe[i] + 5 >= s) c = "mirror " fw[i]
        n[c]++ }
    END { for (k in n) printf "%s%s x%d", (m++ ? ", " : ""), k, n[k] }' "$RESULTS")
OTHER_FAILS=$(awk -v K="$WORK/kills" -v F="$WORK/faults" '
    BEGIN { while ((getline l < K) > 0) { split(l, a, " "); kt[++nk] = a[1]; kd[nk] = a[2] }
            while ((getline l < F) > 0) { split(l, a, " "); fs[++nf] = a[1]; fe[nf] = a[2] } }
    $7 != "0" { s = $4; e = $4 + $5 + 1; c = 0
        for (i = 1; i <= nk; i++) if (kd[i] == $1 && kt[i] >= s - 1 && kt[i] <= e) c = 1
        for (i = 1; i <= nf; i++) if (fs[i] <= e && fe[i] + 5 >= s) c = 1
        if (!c) printf "client %s round %s attempt %s at +%ds\n", $1, $2, $3, $4 - T }' T="$T_RUN" "$RESULTS")
HASHSUM_APT=$(cat "$WORK"/c/*/out.* "$WORK"/c/*/failures 2>/dev/null | grep -ciE 'hash sum mismatch|unexpected size')

MREQ=$(grep -c . "$MLOG")
MBYTES=$(awk '{b += $3} END {printf "%.1f", b/1e6}' "$MLOG")
MPOOL=$(awk '$2 ~ /\/pool\// {b += $3} END {printf "%.1f", b/1e6}' "$MLOG")
MSTAT=$(awk '{s[$4]++} END { for (k in s) printf "%s%s x%d", (c++ ? ", " : ""), k, s[k] }' "$MLOG")

# Per daemon: counters summed over its lives (each start is a life; the
# samples every SAMPLE_SECS s and the one just before each kill), byte
# counters from the last sample (the daemon persists those three).
counters_of() {
    [ -s "$WORK/status/$1.jsonl" ] || { echo "no samples"; return; }
    jq -rs '
      (group_by(.life)) as $lives
      | [$lives[] | {c: (map(.corrupt_downloads // 0) | max), b: (map(.bans // 0) | max), u: (map(.bytes_uploaded // 0) | max)}] as $l
      | ((map(select(.tag == "final")) | last) // last) as $z
      | "starts \($l | length), corrupt_downloads \($l | map(.c) | add), bans \($l | map(.b) | add), uploaded \(($l | map(.u) | add) / 1e6 | floor) MB, from peers \(($z.bytes_from_peers // 0) / 1e6 | floor) MB, from mirror \(($z.bytes_from_mirror // 0) / 1e6 | floor) MB, to apt \(($z.bytes_to_apt // 0) / 1e6 | floor) MB, DHT nodes \($z.dht_nodes // "?"), peer conns \($z.conns // "?")"' \
        "$WORK/status/$1.jsonl" 2>/dev/null || echo "unreadable samples"
}
LOGPAT='corrupt|served but not stored|panick|cannot write|cannot read back|state database write failed|wrong size|different range|banned'
CORRUPT_TOTAL=0 STORE_BAD=0 STORE_UNKNOWN=0 STATE_DIFF=0 LOG_HITS=0
DAEMON_REPORT=
for k in $(seq 1 "$DAEMONS"); do
    clean_log="$WORK/d/$k/log.clean"
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/d/$k/log" >"$clean_log"
    hits=$(grep -ciE "$LOGPAT" "$clean_log")
    LOG_HITS=$((LOG_HITS + hits))
    errs=$(grep -cE '\bERROR\b' "$clean_log")
    warns=$(grep -cE '\bWARN\b' "$clean_log")
    c=$(counters_of "$k")
    cc=$(sed -E 's/.*corrupt_downloads ([0-9]+).*/\1/' <<<"$c")
    [[ $cc =~ ^[0-9]+$ ]] && CORRUPT_TOTAL=$((CORRUPT_TOTAL + cc))
    for v in "${VER1[$k]}" "${VER2[$k]}"; do
        b=$(sed -nE 's/.*\bbad=([0-9]+).*/\1/p' <<<"$v"); STORE_BAD=$((STORE_BAD + ${b:-1}))
        u=$(sed -nE 's/.*\bunknown=([0-9]+).*/\1/p' <<<"$v"); STORE_UNKNOWN=$((STORE_UNKNOWN + ${u:-0}))
        d=$(sed -nE 's/.*rows_without_file=([0-9]+) files_without_row=([0-9]+) row_mismatch=([0-9]+).*/\1 \2 \3/p' <<<"$v")
        STATE_DIFF=$((STATE_DIFF + $(awk '{print $1 + $2 + $3}' <<<"${d:-1 0 0}")))
    done
    [ "${RESTART_CMP[$k]%%:*}" = agree ] || STATE_DIFF=$((STATE_DIFF + 1))
    DAEMON_REPORT+="  d$k ($(DIP "$k")): kills $(printf '%s\n' "${KILL_LOG[@]}" | grep -c " d$k ")
    counters    $c
    stop        ${STOP1[$k]}; after the final restart ${STOP2[$k]}
    store       ${VER1[$k]}
    restart     ${RESTART_CMP[$k]}
    store again ${VER2[$k]}
    log         $errs ERROR, $warns WARN lines; $hits matching /$LOGPAT/
"
    if grep -q '^problem:' "$WORK/verify1.$k" "$WORK/verify2.$k"; then
        DAEMON_REPORT+="$(grep -h '^problem:' "$WORK/verify1.$k" "$WORK/verify2.$k" | sort -u | head -8 | sed 's/^/      /')
"
    fi
    if [ "$hits" != 0 ]; then
        DAEMON_REPORT+="$(grep -iE "$LOGPAT" "$clean_log" | cut -c1-220 | head -5 | sed 's/^/      /')
"
    fi
    if [ "$((errs + warns))" != 0 ]; then
        DAEMON_REPORT+="      most frequent WARN/ERROR lines:
$(grep -E '\b(WARN|ERROR)\b' "$clean_log" | sed -E -e 's/^[^ ]+ +//' -e 's/[0-9]+(\.[0-9]+)?(ms|s|µs)?/N/g' | cut -c1-160 | sort | uniq -c | sort -rn | head -4 | sed 's/^/        /')
"
    fi
done
verdict() { if [ "$1" = 0 ]; then echo "ok"; else echo "FAIL"; fi; }
NETEM_DESC="off"
if [ "$NETEM_MODE" != off ]; then
    NETEM_DESC="delay ${NETEM_DELAY_MS}ms loss ${NETEM_LOSS_PCT}% on every packet entering a daemon namespace, $NETEM_MODE"
    [ "$NETEM_MODE" = toggle ] && NETEM_DESC+=" (${NETEM_ON_SECS}s on / ${NETEM_OFF_SECS}s off, $NETEM_SWITCHES switches)"
    if [ "$IMPL" = netem ]; then
        NETEM_DESC+="; tc qdisc netem on the hub end of each veth"
    else
        NETEM_DESC+="; NFQUEUE + linkdelay.py in each namespace ($NETEM_WHY)"
        NETEM_DESC+="; packets seen/dropped: $(for k in $(seq 1 "$DAEMONS"); do tail -1 "$WORK/linkdelay$k.log" 2>/dev/null | sed -E 's/linkdelay: ([0-9]+) packets, ([0-9]+) dropped.*/\1\/\2/'; done | tr '\n' ' ')"
    fi
fi

cat <<EOF

debtorrent chaos test — $(date -u +%FT%TZ), $(nproc) cores
load average: at start $LOAD_START, clients start $LOAD_RUN_START, chaos end $LOAD_RUN_END, end $(cut -d' ' -f1-3 /proc/loadavg)
binary: $BIN_INFO
settings: DURATION=$DURATION DAEMONS=$DAEMONS KILL_EVERY=$KILL_EVERY DOWN_MIN=$DOWN_MIN DOWN_MAX=$DOWN_MAX
          NETEM_MODE=$NETEM_MODE NETEM_DELAY_MS=$NETEM_DELAY_MS NETEM_LOSS_PCT=$NETEM_LOSS_PCT NETEM_IMPL=$NETEM_IMPL ($IMPL)
          MIRROR_FAULTS="$MIRROR_FAULTS" FAULT_SECS=$FAULT_SECS RETRIES=$RETRIES APT_TIMEOUT=$APT_TIMEOUT END_GRACE=$END_GRACE
          SMALL_N=$SMALL_N SMALL_MIN=$SMALL_MIN SMALL_MAX=$SMALL_MAX LARGE_N=$LARGE_N LARGE_MIN=$LARGE_MIN LARGE_MAX=$LARGE_MAX LARGE_PCT=$LARGE_PCT
          CACHE_SIZE=$CACHE_SIZE SEED=$SEED LOG_LEVEL=$LOG_LEVEL SAMPLE_SECS=$SAMPLE_SECS SUBNET=$SUBNET
archive: $((SMALL_N + LARGE_N)) packages, $REPO_BYTES bytes, signed; mirror http://$MIRROR/debian/ (mirror.py in namespace $HUB)
network: namespaces $HUB (bridge ${TAG}br) + ${TAG}d1..${TAG}d$DAEMONS (veths ${TAG}v<k>/${TAG}e<k>), private DHT, no LSD
timeline: chaos $((T_CHAOS_END - T_RUN)) s, clients done +$((T_CLIENTS_END - T_RUN)) s, total $((EPOCHSECONDS - T_START)) s

apt rounds (update + install --download-only of a random subset; a failed attempt is retried up to $RETRIES times)
  rounds                $ROUNDS   (per client: $PER_CLIENT)
  attempts              $ATTEMPTS, failed $FAILED_ATTEMPTS${BYSTEP:+ ($BYSTEP)}
  failed attempts by cause  ${CAUSES:-none}
  ok at the first try   $FIRST_OK
  failed runs           $FAILED_ROUNDS   (rounds whose first attempt failed; apt exit status non-zero, or fewer .debs than asked)
  fixed by a retry      $FIXED${FIXED_BY:+ ($FIXED_BY)}
  still failing         $UNRESOLVED   (after $RETRIES retries)   $(verdict "$UNRESOLVED")
  timeouts (rc 124)     $TIMEOUTS
  .debs checked         $GOOD_DEBS match the archive's SHA256, $BAD_DEBS do not   $(verdict "$BAD_DEBS")
  apt saw a hash/size mismatch: $HASHSUM_APT lines
  round seconds (ok)    $OKSECS
EOF
if [ -n "$ERRLINES" ]; then
    echo "  apt E:/W: lines of failed attempts (count):"
    echo "$ERRLINES"
fi
if [ -n "$OTHER_FAILS" ]; then
    echo "  failed attempts with neither their daemon killed nor a mirror fault (first 6, with apt's errors):"
    while read -r _ c _ r _ a _ _; do
        awk -v h="client $c round $r attempt $a " 'index($0, h) == 1 {p = 1; print; next} /^client / {p = 0} p' "$WORK/c/$c/failures" | head -5 | sed 's/^/    /'
    done < <(head -6 <<<"$OTHER_FAILS")
fi
cat <<EOF

chaos
  kills (SIGKILL)       $KILLS, of which $KILLS_MID with a download in progress (files in tmp/)
  restarts              $RESTARTS (same data folder); did not come back within 30 s: $NOT_BACK   $(verdict "$NOT_BACK")
$(printf '    %s\n' "${KILL_LOG[@]}")
  netem                 $NETEM_DESC
  mirror faults         ${#FAULT_LOG[@]}: $(printf '%s; ' "${FAULT_LOG[@]}")
  mirror                $MREQ requests, $MBYTES MB ($MPOOL MB pool); statuses: $MSTAT

store and state (after a graceful stop; again after one more restart)
  files failing their hash, all daemons: $STORE_BAD   $(verdict "$STORE_BAD")
  files that are no file of the archive: $STORE_UNKNOWN   $(verdict "$STORE_UNKNOWN")
  store/state.db/status disagreements:   $STATE_DIFF   $(verdict "$STATE_DIFF")
  corrupt_downloads (status.json):       $CORRUPT_TOTAL
  log lines matching /$LOGPAT/: $LOG_HITS
$DAEMON_REPORT
EOF
if [ -s "$WORK/bad-debs" ]; then
    echo ".debs that failed the check:"
    head -20 "$WORK/bad-debs" | sed 's/^/  /'
fi
if [ "${#NOTES[@]}" -gt 0 ]; then
    echo
    echo "problems seen:"
    for n in "${NOTES[@]}"; do echo "  - $n"; done
fi
