#!/usr/bin/env bash
# bench/swarm/run.sh — the swarm benchmarks of docs/swarm-design.md §15, in
# one run, everything on 127.0.0.0/8:
#   (1) one seed daemon -> one leecher daemon, a 10^9-byte package, every
#       byte from the seed (the leecher's mirror answers 404 for pool/):
#       median MB/s of $RUNS, vs libtorrent 2.0.8 (python3-libtorrent, two
#       sessions, TCP only) on the same file, and the single-core SHA-256
#       rate of the same bytes (the ceiling);
#   (2) 8 daemons fetch the same package set one after another, then 8
#       fresh daemons all at once: mirror pool bytes / set size;
#   (3) a 10 MB/s mirror and 4 daemons holding the set: a 5th daemon's time
#       for the set vs a --no-peers daemon's time straight from that mirror;
#   (4) VmRSS of a daemon with 100 scripted dt2 peer connections (peers.py:
#       handshake with the set's dt2 swarm id, dt_hold);
#   (5) index update: a daemon holds the set through one index version; a
#       second one sees only the next version (one package added, one
#       upgraded), a third only another suite listing the same files:
#       mirror pool bytes / the bytes they could have had from the first.
#       Then DHT load: private DHTs of 4 daemons each, every daemon in 1, 4
#       or 16 swarms (side by side): UDP packets and bytes per node per
#       second on the DHT sockets (nftables counters; needs root, installs
#       nftables if missing).
#
# Usage: bench/swarm/run.sh          (builds target/release/debtorrent first)
# Env:   DEBTORRENT_BIN=path  use this binary instead of building
#        RUNS=3 (scenario 1)  BIG=1000000000  SET_N=20 SET_MIN=1000000
#        SET_MAX=8000000  NPEERS=100  SCENARIOS="1 2 3 4 5"
#        SEQ_SETTLED=1 (also run (2) one after another with the indexes
#        registered 61 s before; 0 skips that minute)
#        DHT_SWARMS="1 4 16" (scenario 5's DHT load; empty skips it)
#        DHT_NODES=4 DHT_SETTLE=80 DHT_WINDOW=60 (seconds)
#        LOG_LEVEL=...  (daemon --log-level; default info plus debug for
#        the torrent task, which logs each mirror range, and discovery)
#        BENCH_TMP=/tmp (where the work folder goes; it needs ~4 GB)
#        KEEP=1 keeps the work folder (daemon logs, status.json snapshots)
# Every loop and wait is bounded; every process started here is stopped at
# exit, and the nftables table scenario 5 adds is deleted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
BIG=${BIG:-1000000000}
SET_N=${SET_N:-20}
SET_MIN=${SET_MIN:-1000000}
SET_MAX=${SET_MAX:-8000000}
NPEERS=${NPEERS:-100}
SEQ_SETTLED=${SEQ_SETTLED:-1}
SCENARIOS=${SCENARIOS:-1 2 3 4 5}
DHT_SWARMS=${DHT_SWARMS-1 4 16}
DHT_NODES=${DHT_NODES:-4}
DHT_SETTLE=${DHT_SETTLE:-80}
DHT_WINDOW=${DHT_WINDOW:-60}
LOG_LEVEL=${LOG_LEVEL:-info,debtorrent::swarm::torrent=debug,debtorrent::discovery=debug}
PY=/usr/bin/python3
T_START=$(date +%s)

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need nginx nginx-light
need curl curl
need jq jq
need openssl openssl
need sha256sum coreutils
[ -x /usr/bin/time ] || { echo "bench: missing /usr/bin/time (apt-get install time)" >&2; exit 1; }
"$PY" -c 'import libtorrent' 2>/dev/null || { echo "bench: missing python3-libtorrent (apt-get install python3-libtorrent)" >&2; exit 1; }
# Scenario 5's DHT load is counted with nftables counters (root only).
DHT_ON=0
case " $SCENARIOS " in *" 5 "*) [ -n "$DHT_SWARMS" ] && DHT_ON=1 ;; esac
if [ "$DHT_ON" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "bench: scenario 5's DHT load needs root (nftables counters); DHT_SWARMS= skips it" >&2; exit 1; }
    for n in $DHT_SWARMS; do
        [[ $n =~ ^(0|[1-9][0-9]?)$ ]] || { echo "bench: DHT_SWARMS: $n is not 0..99" >&2; exit 1; }
    done
    if [ $((70 + $(wc -w <<<"$DHT_SWARMS") * DHT_NODES)) -gt 99 ]; then
        echo "bench: DHT_SWARMS x DHT_NODES needs addresses past 127.0.0.99 (peers.py's)" >&2
        exit 1
    fi
    if ! command -v nft >/dev/null 2>&1; then
        echo "bench: installing nftables (scenario 5's DHT counters)" >&2
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get install -y -q nftables >/dev/null ||
            { timeout 300 apt-get update -q >/dev/null && timeout 300 apt-get install -y -q nftables >/dev/null; } ||
            { echo "bench: cannot install nftables (DHT_SWARMS= skips the DHT load)" >&2; exit 1; }
    fi
fi

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/dt-swarm.XXXXXX")
chmod 755 "$WORK"
PIDS=()
NFT_TABLE=
cleanup() {
    local p i
    if [ -n "$NFT_TABLE" ]; then nft delete table inet "$NFT_TABLE" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "bench: kept $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "bench: [$(($(date +%s) - T_START))s] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() {
    local i
    for i in $(seq 1 200); do port_open "$1" "$2" && return 0; sleep 0.05; done
    echo "bench: nothing listens on $1:$2 after 10 s" >&2
    return 1
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# pergb SECONDS: seconds per 10^9 bytes of the big file ("nan" stays).
pergb() { awk -v c="$1" -v b="$BIG" 'BEGIN { if (c == "nan" || c == "") print "nan"; else printf "%.2f", c*1e9/b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
fmt() { awk -v a="$1" -v d="${2:-1}" 'BEGIN { if (a == "nan" || a == "") print "n/a"; else printf "%.*f", d, a }'; }
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b-a }'; }

# ------------------------------------------------------------------ binary
if [ -z "${DEBTORRENT_BIN:-}" ]; then
    log "building target/release/debtorrent"
    (cd "$TOP" && cargo build -q --release --bin debtorrent)
    DEBTORRENT_BIN="$TOP/target/release/debtorrent"
fi
# A private copy: a rebuild by someone else during the run changes nothing.
cp "$DEBTORRENT_BIN" "$WORK/debtorrent"
BIN="$WORK/debtorrent"

# -------------------------------------------------------------- repository
log "building the archive: $BIG-byte package, $SET_N packages of $SET_MIN..$SET_MAX bytes"
REPO="$WORK/repo"
DHT_MAXN=0
for n in $DHT_SWARMS; do [ "$n" -gt "$DHT_MAXN" ] && DHT_MAXN=$n; done
"$PY" "$HERE/mkrepo.py" "$REPO" "$BIG" "$SET_N" "$SET_MIN" "$SET_MAX" 1 "$DHT_MAXN"
BIG_PATH=$(awk '$1=="big" {print $4}' "$REPO/big.files")
WARM_PATH=$(awk '$1=="warm" {print $4}' "$REPO/big.files")
SET_SIZE=$(awk '{s+=$2} END {print s}' "$REPO/set.files")
mapfile -t SET_PATHS < <(awk '{print $4}' "$REPO/set.files")

# ------------------------------------------------------------------- nginx
# One nginx, two views of the same archive:
#   /full/   everything;
#   /nopool/ indexes only, 404 for pool/ (scenario 1's leecher: every byte
#            must come from the seed).
# And slowmirror.py for /slow/ (scenario 3): pool/ through one 10 MB/s token
# bucket over all connections (nginx's limit_rate is per connection and
# lets a first second's worth through unthrottled).
# Both logs have "$uri $body_bytes_sent $status" per request: the mirror's
# pool bytes are summed from them.
NGINX_IP=127.0.0.1
NGINX_PORT=
for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    port_open "$NGINX_IP" "$p" || { NGINX_PORT=$p; break; }
done
[ -n "$NGINX_PORT" ] || { echo "bench: no free port" >&2; exit 1; }
mkdir -p "$WORK/nginx/tmp"
ACCESS="$WORK/nginx/access.log"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 2048; }
http {
    log_format bytes '\$uri \$body_bytes_sent \$status';
    access_log $ACCESS bytes;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    default_type application/octet-stream;
    server {
        listen $NGINX_IP:$NGINX_PORT;
        location /full/ { alias $REPO/; }
        location /nopool/dists/ { alias $REPO/dists/; }
        location /nopool/pool/ { return 404; }
    }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port "$NGINX_IP" "$NGINX_PORT"
MIRROR="$NGINX_IP:$NGINX_PORT"
SLOW_PORT=
for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    [ "$p" != "$NGINX_PORT" ] && ! port_open "$NGINX_IP" "$p" && { SLOW_PORT=$p; break; }
done
SLOW_LOG="$WORK/slowmirror.log"
: >"$SLOW_LOG"
"$PY" "$HERE/slowmirror.py" "$REPO" "$NGINX_IP" "$SLOW_PORT" 10000000 "$SLOW_LOG" 2>"$WORK/slowmirror.err" &
PIDS+=($!)
wait_port "$NGINX_IP" "$SLOW_PORT"
SLOW="$NGINX_IP:$SLOW_PORT"
log "nginx on $MIRROR, 10 MB/s mirror on $SLOW"
# Pool bytes the mirrors sent since the last reset (nginx appends with
# O_APPEND, so truncating the log starts a new count).
mirror_reset() { : >"$ACCESS"; : >"$SLOW_LOG"; }
mirror_pool_bytes() { cat "$ACCESS" "$SLOW_LOG" | awk '$1 ~ /\/pool\// {s+=$2} END {printf "%d\n", s}'; }
# The mirror URL of a view.
vurl() { if [ "$1" = slow ]; then echo "$SLOW/slow"; else echo "$MIRROR/$1"; fi; }

# ---------------------------------------------------------------- daemons
declare -A DPID DHTTP DPEER
# start_daemon NAME IP ARGS... : fresh data folder, random free ports
# (HTTP on P, BitTorrent TCP+UDP on P+1).
start_daemon() {
    local name=$1 ip=$2 p i
    shift 2
    p=
    for i in $(seq 1 100); do
        local c=$((20000 + RANDOM % 12000))
        if ! port_open "$ip" "$c" && ! port_open "$ip" $((c + 1)); then p=$c; break; fi
    done
    [ -n "$p" ] || { echo "bench: no free port on $ip" >&2; return 1; }
    rm -rf "$WORK/d/$name"
    mkdir -p "$WORK/d/$name/data"
    "$BIN" serve --listen "$ip:$p" --data-dir "$WORK/d/$name/data" --peer-addr "$ip:$((p + 1))" \
        --no-lsd --allow-port "$NGINX_PORT,$SLOW_PORT" --log-level "$LOG_LEVEL" "$@" \
        >"$WORK/d/$name/stdout" 2>"$WORK/d/$name/stderr" &
    DPID[$name]=$!
    PIDS+=("$!")
    DHTTP[$name]="$ip:$p"
    DPEER[$name]="$ip:$((p + 1))"
    wait_port "$ip" "$p"
}
stop_daemon() {
    local name=$1 p i
    p=${DPID[$name]:-}
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    DPID[$name]=
}
status() { curl -s --max-time 5 "http://${DHTTP[$1]}/status.json"; }
# The torrent of suite $2 in daemon $1's status.json (or null).
torrent_of() { status "$1" | jq -c --arg s "dists/$2/" '[.torrents[]? | select(.index_path | contains($s))][0]'; }
# index NAME VIEW SUITE [COMPONENT]: Release + Packages (of COMPONENT,
# default main) through the daemon, then wait (10 s at most) until the
# torrent is registered; prints its info hash. Without a COMPONENT the
# Release is fetched each time; with one, only if the daemon has no
# torrent of the suite yet (apt-get update: one Release, then every
# component's Packages).
index() {
    local name=$1 view=$2 suite=$3 comp=${4:-} base code i t key
    base="http://${DHTTP[$name]}/$(vurl "$view")/dists/$suite"
    key=$suite
    [ -z "$comp" ] || key="$suite/$comp"
    if [ -z "$comp" ] || [ "$(torrent_of "$name" "$suite")" = null ]; then
        code=$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' "$base/Release")
        [ "$code" = 200 ] || { echo "bench: $name: Release gave HTTP $code" >&2; return 1; }
    fi
    code=$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' "$base/${comp:-main}/binary-amd64/Packages")
    [ "$code" = 200 ] || { echo "bench: $name: Packages gave HTTP $code" >&2; return 1; }
    for i in $(seq 1 100); do
        t=$(torrent_of "$name" "$key" | jq -r '.info_hash // empty')
        [ -n "$t" ] && { echo "$t"; return 0; }
        sleep 0.1
    done
    echo "bench: $name: no torrent for dists/$key after 10 s" >&2
    return 1
}
# get NAME VIEW PATH WANT_SIZE: one package through the daemon; prints
# "seconds bytes http_code"; returns 1 on a wrong answer.
get() {
    local name=$1 view=$2 path=$3 want=$4 out code size t
    out=$(curl -s -o /dev/null --max-time 300 -w '%{http_code} %{size_download} %{time_total}' \
        "http://${DHTTP[$name]}/$(vurl "$view")/$path" || true)
    read -r code size t <<<"$out"
    echo "$t $size $code"
    if [ "$code" != 200 ] || [ "$size" != "$want" ]; then
        echo "bench: $name: $path gave HTTP $code, $size bytes (want $want)" >&2
        return 1
    fi
}
# fetch_list NAME VIEW FILE: every package listed in FILE ("name size
# sha256 path" lines), in order; prints failures.
fetch_list() {
    local name=$1 view=$2 file=$3 bad=0 pth size
    while read -r _ size _ pth; do
        get "$name" "$view" "$pth" "$size" >/dev/null || bad=$((bad + 1))
    done <"$file"
    echo "$bad"
}
# fetch_set NAME VIEW: every package of the set.
fetch_set() { fetch_list "$1" "$2" "$REPO/set.files"; }
# Page-cache pages the receivers write into, host-backed. In a VM with
# free page reporting (virtio-balloon; this workplace's machines have it),
# free memory goes back to the host about 2 s after it is freed, and the
# next write into such a page costs a host fault: writing 1 GB into a new
# file took 1.4-1.6 s of system time in that state, and 0.5 s right after a
# 1 GB file was deleted. The receiver is charged for it, a different amount
# each run. Bare metal does not pay it. So right before each timed
# transfer, ours and libtorrent's, PREFAULT_MB of page cache is written to
# a file on the same file system and deleted: the transfer then takes those
# pages, backed. (Touching anonymous memory instead did not help: the page
# cache did not take those pages.) PREFAULT_MB=0 measures without it.
PREFAULT_MB=${PREFAULT_MB:-1200}
prefault() {
    [ "$PREFAULT_MB" -gt 0 ] 2>/dev/null || return 0
    dd if=/dev/zero of="$WORK/prefault" bs=1M count="$PREFAULT_MB" status=none || true
    rm -f "$WORK/prefault"
}
# CPU seconds (user+system) a process has used so far.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo n/a; }
hwm_mb() { awk '/^VmHWM:/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo n/a; }
mirror_ranges() { grep -c "mirror takes a range" "$WORK/d/$1/stderr" 2>/dev/null || true; }
tail_rule() { grep -c "peers slower than the mirror" "$WORK/d/$1/stderr" 2>/dev/null || true; }
stalls() { grep -c "peer stalled" "$WORK/d/$1/stderr" 2>/dev/null || true; }
NOTES=()
note() { NOTES+=("$*"); log "NOTE: $*"; }

# ============================================================ scenario 1
S1_CPU="" S1_LCPU=nan S1_SCPU=nan S1_OSSL=nan S1_OSSL_RUNS="" S1_NGX=nan S1_NGX_RUNS="" S1_DD=nan S1_DD_RUNS="" S1_IPB="" S1_OURS=nan S1_LT=nan S1_SHA=nan S1_SHASUM=nan S1_SEEDFILL=nan S1_RUNS="" S1_LT_RUNS="" S1_CHECK="" S1_WARM=""
scenario1() {
    # A third, idle DHT node that both bootstrap from. With only the seed
    # and the leecher, the seed's first announce fails (empty table) and is
    # retried each second, while the leecher looks up at registration, finds
    # nobody, and treats that answer as fresh for 60 s: every request in that
    # minute goes straight to the mirror (seen with --log-level debug:
    # "DHT lookup done found=0", then "mirror takes a range ... waited_ms=0").
    log "(1) DHT node on 127.0.0.30; seed daemon on 127.0.0.31 takes the $BIG-byte package from the mirror"
    start_daemon s1boot 127.0.0.30 --dht-bootstrap none
    start_daemon s1seed 127.0.0.31 --dht-bootstrap "${DPEER[s1boot]}"
    index s1seed full big >/dev/null
    local r t0 out
    out=$(get s1seed full "$BIG_PATH" "$BIG") || { note "(1) the seed could not fetch the package from the mirror"; return 0; }
    S1_SEEDFILL=$(awk -v t="${out%% *}" -v b="$BIG" 'BEGIN { printf "%.0f", b/t/1e6 }')
    get s1seed full "$WARM_PATH" 1000000 >/dev/null || true
    : >"$WORK/s1-ours"
    : >"$WORK/s1-lcpu"
    : >"$WORK/s1-scpu"
    for r in $(seq 1 "$RUNS"); do
        # The leecher's one lookup at registration sometimes answers
        # found=0 even with the seed announced seconds before (and that
        # answer holds for 60 s): start it again, at most 3 times, until the
        # seed shows up among its connected peers.
        local L a ok=0 i
        for a in 1 2 3; do
            L="s1leech$r-$a"
            start_daemon "$L" 127.0.0.32 --dht-bootstrap "${DPEER[s1seed]},${DPEER[s1boot]}" --peer-wait 1s
            index "$L" nopool big >/dev/null
            for i in $(seq 1 30); do
                if torrent_of "$L" big | jq -e --arg s "${DPEER[s1seed]}" '[.peers[]?.addr] | index($s)' >/dev/null; then ok=1; break; fi
                sleep 0.1
            done
            [ "$ok" = 1 ] && break
            note "(1) run $r, leecher start $a: not connected to the seed 3 s after registration ($(sed 's/\x1b\[[0-9;]*m//g' "$WORK/d/$L/stderr" | grep -o 'DHT lookup done found=[0-9]*' | head -n 1)); started again"
            stop_daemon "$L"
        done
        sleep 1
        local w
        w=$(get "$L" nopool "$WARM_PATH" 1000000) || note "(1) run $r: warm-up package failed through the leecher"
        S1_WARM+="${w%% *}s "
        local before after
        before=$(torrent_of "$L" big || true)
        before=${before:-null}
        status "$L" >"$WORK/s1-run$r-before.json"
        local cl0 cs0
        prefault
        cl0=$(cpu_secs "${DPID[$L]}")
        cs0=$(cpu_secs "${DPID[s1seed]}")
        # PERF_OUT=prefix: profile the leecher during the transfer (perf
        # record); PERF_STAT=events: count those events instead (perf stat,
        # e.g. syscalls:sys_enter_pwritev,syscalls:sys_enter_recvfrom),
        # into PERF_OUT-<run>.stat.
        # PERF_WHO=seed: the seed instead.
        local perfpid= perfwho=${DPID[$L]}
        [ "${PERF_WHO:-}" = seed ] && perfwho=${DPID[s1seed]}
        if [ -n "${PERF_OUT:-}" ] && [ -n "${PERF_STAT:-}" ]; then
            perf stat -e "$PERF_STAT" -p "$perfwho" -o "$PERF_OUT-$r.stat" >/dev/null 2>&1 &
            perfpid=$!
            sleep 0.3
        elif [ -n "${PERF_OUT:-}" ]; then
            perf record -q -F 499 -g -p "$perfwho" -o "$PERF_OUT-$r.data" >/dev/null 2>&1 &
            perfpid=$!
            sleep 0.3
        fi
        if out=$(get "$L" nopool "$BIG_PATH" "$BIG"); then
            awk -v t="${out%% *}" -v b="$BIG" 'BEGIN { printf "%.1f\n", b/t/1e6 }' >>"$WORK/s1-ours"
            S1_RUNS+="$(awk -v t="${out%% *}" 'BEGIN { printf "%.2f", t }')s "
        else
            S1_RUNS+="FAIL($out) "
            note "(1) run $r failed: $out; leecher log: $WORK/d/$L/stderr"
        fi
        if [ -n "$perfpid" ]; then kill -INT "$perfpid" 2>/dev/null; wait "$perfpid" 2>/dev/null || true; fi
        local lc sc
        lc=$(awk -v a="$cl0" -v b="$(cpu_secs "${DPID[$L]}")" 'BEGIN { printf "%.2f", b-a }')
        sc=$(awk -v a="$cs0" -v b="$(cpu_secs "${DPID[s1seed]}")" 'BEGIN { printf "%.2f", b-a }')
        echo "$lc" >>"$WORK/s1-lcpu"
        echo "$sc" >>"$WORK/s1-scpu"
        S1_CPU+="run $r: leecher $lc s, seed $sc s; "
        sleep 0.3
        after=$(torrent_of "$L" big || true)
        after=${after:-null}
        status "$L" >"$WORK/s1-run$r-after.json"
        local dp dm
        dp=$(jq -n --argjson a "$after" --argjson b "$before" '($a.bytes_from_peers // 0) - ($b.bytes_from_peers // 0)')
        dm=$(jq -n --argjson a "$after" --argjson b "$before" '($a.bytes_from_mirror // 0) - ($b.bytes_from_mirror // 0)')
        S1_CHECK+="run $r: from peers $dp, from mirror $dm; "
        if [ "$dp" -lt $((BIG * 99 / 100)) ] || [ "$dm" -gt $((BIG / 100)) ]; then
            note "(1) run $r: the leecher took $dp bytes from peers and $dm from the mirror for the package"
        fi
        stop_daemon "$L"
        rm -rf "$WORK/d/$L/data"
    done
    S1_OURS=$(median <"$WORK/s1-ours")
    S1_LCPU=$(median <"$WORK/s1-lcpu")
    S1_SCPU=$(median <"$WORK/s1-scpu")
    stop_daemon s1seed
    stop_daemon s1boot

    log "(1) libtorrent reference ($RUNS runs)"
    local ltp=$((20000 + RANDOM % 12000))
    PREFAULT_MB=$PREFAULT_MB timeout $((60 + RUNS * 130)) "$PY" "$HERE/lt_ref.py" "$REPO/$BIG_PATH" "$WORK" "$RUNS" \
        127.0.0.61 127.0.0.62 "$ltp" >"$WORK/lt.out" 2>"$WORK/lt.err" &
    local ltpid=$!
    PIDS+=("$ltpid")
    wait "$ltpid" || note "(1) lt_ref.py failed: $(tail -n 3 "$WORK/lt.err" | tr '\n' ' ')"
    : >"$WORK/s1-lt"
    awk -v b="$BIG" '$1=="lt_run" {printf "%.1f\n", b/$2/1e6}' "$WORK/lt.out" >>"$WORK/s1-lt"
    S1_LT=$(median <"$WORK/s1-lt")
    S1_LT_RUNS=$(awk '$1=="lt_run" {printf "%ss ", $2} $1=="lt_fail" {printf "FAIL "}' "$WORK/lt.out")
    S1_LT_INFO=$(awk '$1=="lt_info" {print $2, $3}' "$WORK/lt.out")

    log "(1) SHA-256 of the same bytes, one core"
    cat "$REPO/$BIG_PATH" >/dev/null
    S1_SHA=$("$PY" - "$REPO/$BIG_PATH" <<'EOF'
import hashlib, sys, time
h = hashlib.sha256()
t = time.monotonic()
with open(sys.argv[1], "rb", buffering=0) as f:
    b = bytearray(1 << 20)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(memoryview(b)[:n])
s = time.monotonic() - t
import os
print(f"{os.path.getsize(sys.argv[1]) / s / 1e6:.0f}")
EOF
)
    local t
    t0=$(date +%s.%N)
    sha256sum "$REPO/$BIG_PATH" >/dev/null
    t=$(secs_since "$t0")
    S1_SHASUM=$(awk -v t="$t" -v b="$BIG" 'BEGIN { printf "%.0f", b/t/1e6 }')

    # The CPU floor for a leecher: `openssl dgst -sha256` on the same bytes
    # (page cache warm), its user+system time, median of 3.
    log "(1) openssl dgst -sha256 CPU on the same bytes"
    : >"$WORK/s1-ossl"
    for r in 1 2 3; do
        /usr/bin/time -f "%U %S" -o "$WORK/ossl-time" openssl dgst -sha256 "$REPO/$BIG_PATH" >/dev/null
        awk '{ printf "%.2f\n", $1 + $2 }' "$WORK/ossl-time" >>"$WORK/s1-ossl"
    done
    S1_OSSL=$(median <"$WORK/s1-ossl")
    S1_OSSL_RUNS=$(tr '\n' ' ' <"$WORK/s1-ossl")
    # The other half of a leecher's floor: handing the bytes to apt. nginx
    # sending the same file (page cache warm, sendfile) to curl over
    # loopback, its workers' user+system time, median of 3. The loopback
    # TCP path (the skbs, and curl's side of the receive, which runs in the
    # sender's softirq) is charged to the sender, as it is to our leecher.
    log "(1) nginx CPU to send the same bytes to curl"
    : >"$WORK/s1-ngx"
    local master workers c0 c1 w
    master=$(cat "$WORK/nginx/nginx.pid" 2>/dev/null || true)
    workers=
    if [ -n "$master" ]; then workers=$(pgrep -P "$master" 2>/dev/null | tr '\n' ' ' || true); fi
    if [ -n "$workers" ]; then
        local got
        for r in 1 2 3; do
            c0=0 c1=0
            for w in $workers; do c0=$(awk -v a="$c0" -v b="$(cpu_secs "$w")" 'BEGIN { print a + b }'); done
            got=$(curl -s --max-time 60 -o /dev/null -w '%{size_download}' "http://$MIRROR/full/$BIG_PATH" || true)
            for w in $workers; do c1=$(awk -v a="$c1" -v b="$(cpu_secs "$w")" 'BEGIN { print a + b }'); done
            if [ "$got" != "$BIG" ]; then
                note "(1) nginx run $r: curl got ${got:-nothing} of $BIG bytes; not counted"
                continue
            fi
            awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f\n", b - a }' >>"$WORK/s1-ngx"
        done
        S1_NGX=$(median <"$WORK/s1-ngx")
        S1_NGX_RUNS=$(tr '\n' ' ' <"$WORK/s1-ngx")
    else
        note "(1) no nginx worker found: the delivery reference is not measured"
    fi
    # The third part: storing the bytes. dd copies the file (page cache
    # warm) into a new file on the same file system, 1 MiB at a time: one
    # copy out (as the socket read is) and the page-cache write. Pages
    # prefaulted as for the transfers; user+system time, median of 3.
    log "(1) dd: the same bytes into a new file"
    : >"$WORK/s1-dd"
    for r in 1 2 3; do
        prefault
        if /usr/bin/time -f "%U %S" -o "$WORK/dd-time" dd if="$REPO/$BIG_PATH" of="$WORK/ddcopy" bs=1M status=none; then
            awk '{ printf "%.2f\n", $1 + $2 }' "$WORK/dd-time" >>"$WORK/s1-dd"
        else
            note "(1) dd run $r failed (disk full?); not counted"
        fi
        rm -f "$WORK/ddcopy"
    done
    S1_DD=$(median <"$WORK/s1-dd")
    S1_DD_RUNS=$(tr '\n' ' ' <"$WORK/s1-dd")
    # Instructions per byte, where the machine exposes the counter (VMs
    # often do not).
    if perf stat -x, -e instructions -o "$WORK/ossl-perf" openssl dgst -sha256 "$REPO/$BIG_PATH" >/dev/null 2>&1 &&
        awk -F, '$3=="instructions" && $1 ~ /^[0-9]+$/ { found=1 } END { exit !found }' "$WORK/ossl-perf"; then
        S1_IPB="openssl $(awk -F, -v b="$BIG" '$3=="instructions" { printf "%.2f", $1/b }' "$WORK/ossl-perf") instructions/byte"
    else
        S1_IPB="not available (perf stat: instructions counter not supported on this machine)"
    fi
}

# ============================================================ scenario 2
S2_SEQ2=n/a S2_SEQ2_SECS=nan S2_SEQ2_DETAIL="(SEQ_SETTLED=0)"
S2_SEQ=nan S2_CONC=nan S2_SEQ_DETAIL="" S2_CONC_DETAIL="" S2_SEQ_SECS=nan S2_CONC_SECS=nan
start8() { # fresh daemons c1..c8 on 127.0.0.11..18, private DHT from c1
    local k
    start_daemon c1 127.0.0.11 --dht-bootstrap none
    for k in 2 3 4 5 6 7 8; do
        start_daemon "c$k" "127.0.0.1$k" --dht-bootstrap "${DPEER[c1]}"
    done
    for k in 1 2 3 4 5 6 7 8; do index "c$k" full set >/dev/null; done
    sleep 2
}
per_daemon() { # "k:peers/mirror MB" for c1..c8
    local k t
    for k in 1 2 3 4 5 6 7 8; do
        t=$(torrent_of "c$k" set)
        printf 'c%s %s/%s ' "$k" \
            "$(jq -r '(.bytes_from_peers // 0) / 1e6 | floor' <<<"$t")" \
            "$(jq -r '(.bytes_from_mirror // 0) / 1e6 | floor' <<<"$t")"
    done
}
scenario2() {
    local k bad t0 b
    # Daemon k starts, runs its "apt-get update" (Release + Packages) and
    # fetches the set once daemon k-1 is done. (Registering all 8 indexes
    # first and then fetching one after another measures something else:
    # each daemon's DHT lookup runs once at registration, and an answer that
    # missed the others' announces is trusted for 60 s, so such a daemon
    # takes everything from the mirror; see the notes in the README.)
    log "(2) 8 daemons, one after another"
    mirror_reset
    t0=$(date +%s.%N)
    start_daemon c1 127.0.0.11 --dht-bootstrap none
    for k in 1 2 3 4 5 6 7 8; do
        [ "$k" = 1 ] || start_daemon "c$k" "127.0.0.1$k" --dht-bootstrap "${DPEER[c1]}"
        index "c$k" full set >/dev/null
        bad=$(fetch_set "c$k" full)
        [ "$bad" = 0 ] || note "(2) sequential: c$k had $bad failed packages"
    done
    S2_SEQ_SECS=$(secs_since "$t0")
    b=$(mirror_pool_bytes)
    S2_SEQ=$(awk -v a="$b" -v s="$SET_SIZE" 'BEGIN { printf "%.3f", a/s }')
    S2_SEQ_DETAIL="mirror pool bytes $b; per daemon MB peers/mirror: $(per_daemon); mirror ranges c2..c8: $(for k in 2 3 4 5 6 7 8; do printf '%s ' "$(mirror_ranges "c$k")"; done)"
    for k in 1 2 3 4 5 6 7 8; do stop_daemon "c$k"; mv "$WORK/d/c$k" "$WORK/d/seq-c$k"; rm -rf "$WORK/d/seq-c$k/data"; done

    if [ "$SEQ_SETTLED" = 1 ]; then
        log "(2) 8 daemons, one after another, indexes registered 61 s before (lookup answers expired)"
        start8
        sleep 59
        mirror_reset
        t0=$(date +%s.%N)
        for k in 1 2 3 4 5 6 7 8; do
            bad=$(fetch_set "c$k" full)
            [ "$bad" = 0 ] || note "(2) sequential, settled: c$k had $bad failed packages"
        done
        S2_SEQ2_SECS=$(secs_since "$t0")
        b=$(mirror_pool_bytes)
        S2_SEQ2=$(awk -v a="$b" -v s="$SET_SIZE" 'BEGIN { printf "%.3f", a/s }')
        S2_SEQ2_DETAIL="mirror pool bytes $b; per daemon MB peers/mirror: $(per_daemon)"
        for k in 1 2 3 4 5 6 7 8; do stop_daemon "c$k"; mv "$WORK/d/c$k" "$WORK/d/seq2-c$k"; rm -rf "$WORK/d/seq2-c$k/data"; done
    fi

    log "(2) 8 fresh daemons, all at once"
    start8
    mirror_reset
    t0=$(date +%s.%N)
    local pids=() i
    for k in 1 2 3 4 5 6 7 8; do
        (fetch_set "c$k" full >"$WORK/conc-c$k.bad" 2>"$WORK/conc-c$k.err") &
        pids+=($!)
        PIDS+=($!)
    done
    for i in $(seq 1 3000); do # 300 s at most
        local alive=0
        for k in "${pids[@]}"; do kill -0 "$k" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for k in "${!pids[@]}"; do
        if kill -0 "${pids[$k]}" 2>/dev/null; then
            note "(2) concurrent: c$((k + 1)) still fetching after 300 s"
            kill "${pids[$k]}" 2>/dev/null || true
        fi
        wait "${pids[$k]}" 2>/dev/null || true
    done
    S2_CONC_SECS=$(secs_since "$t0")
    for k in 1 2 3 4 5 6 7 8; do
        bad=$(cat "$WORK/conc-c$k.bad" 2>/dev/null || echo '?')
        [ "$bad" = 0 ] || note "(2) concurrent: c$k had $bad failed packages: $(head -c 300 "$WORK/conc-c$k.err")"
    done
    b=$(mirror_pool_bytes)
    S2_CONC=$(awk -v a="$b" -v s="$SET_SIZE" 'BEGIN { printf "%.3f", a/s }')
    S2_CONC_DETAIL="mirror pool bytes $b; per daemon MB peers/mirror: $(per_daemon); mirror ranges (rule b tails) per daemon: $(for k in 1 2 3 4 5 6 7 8; do printf '%s(%s) ' "$(mirror_ranges "c$k")" "$(tail_rule "c$k")"; done)"
}

# ============================================================ scenario 3
S3_PEERS=nan S3_MIRROR=nan S3_DETAIL=""
scenario3() {
    local k t0 bad b
    if [ -z "${DPID[c1]:-}" ]; then
        log "(3) 4 daemons take the set (c1 from the mirror, c2..c4 from it)"
        start_daemon c1 127.0.0.11 --dht-bootstrap none
        for k in 2 3 4; do start_daemon "c$k" "127.0.0.1$k" --dht-bootstrap "${DPEER[c1]}"; done
        for k in 1 2 3 4; do index "c$k" full set >/dev/null; sleep 0.5; fetch_set "c$k" full >/dev/null; done
    fi
    for k in 5 6 7 8; do stop_daemon "c$k"; done
    log "(3) a 5th daemon on 127.0.0.19 with the 10 MB/s mirror and 4 peers holding the set"
    start_daemon p5 127.0.0.19 --dht-bootstrap "${DPEER[c1]}"
    index p5 slow set >/dev/null
    sleep 2
    mirror_reset
    t0=$(date +%s.%N)
    bad=$(fetch_set p5 slow)
    S3_PEERS=$(secs_since "$t0")
    [ "$bad" = 0 ] || note "(3) p5 had $bad failed packages"
    b=$(mirror_pool_bytes)
    local t
    t=$(torrent_of p5 set)
    S3_DETAIL="p5: from peers $(jq -r '.bytes_from_peers // 0' <<<"$t") B, from mirror $(jq -r '.bytes_from_mirror // 0' <<<"$t") B (nginx pool bytes $b), mirror ranges $(mirror_ranges p5), rule-b tails $(tail_rule p5), stalls $(stalls p5)"
    stop_daemon p5
    for k in 1 2 3 4; do stop_daemon "c$k"; done

    log "(3) a --no-peers daemon straight from the 10 MB/s mirror"
    start_daemon np 127.0.0.20 --no-peers
    index np slow set >/dev/null
    mirror_reset
    t0=$(date +%s.%N)
    bad=$(fetch_set np slow)
    S3_MIRROR=$(secs_since "$t0")
    [ "$bad" = 0 ] || note "(3) the --no-peers daemon had $bad failed packages"
    S3_DETAIL+="; --no-peers: nginx pool bytes $(mirror_pool_bytes)"
    stop_daemon np
}

# ============================================================ scenario 4
S4_RSS=nan S4_BASE=nan S4_PEERS=0 S4_HWM=nan S4_DETAIL=""
scenario4() {
    log "(4) a daemon holding the set, then $NPEERS scripted peers"
    start_daemon r4 127.0.0.21 --dht-bootstrap none --max-peers 300 --max-peers-per-ip 2 --max-peers-per-torrent 200
    # dt2: peers meet in the swarm of (Origin, suite family, component),
    # and the handshake's info hash is that swarm id.
    local ih sid
    ih=$(index r4 full set)
    sid=$(torrent_of r4 set | jq -r '.swarm_id // empty')
    [ -n "$sid" ] || { note "(4) no swarm_id for dists/set in /status.json; the peers use the info hash"; sid=$ih; }
    local bad
    bad=$(fetch_set r4 full)
    [ "$bad" = 0 ] || note "(4) r4 had $bad failed packages"
    sleep 2
    S4_BASE=$(rss_mb "${DPID[r4]}")
    # What the daemon may announce in dt_hold, by SHA-256: the set's files
    # and its Packages index.
    local content="$WORK/s4-content"
    awk '{print $3, $2}' "$REPO/set.files" >"$content"
    echo "$(sha256sum <"$REPO/dists/set/main/binary-amd64/Packages" | cut -d' ' -f1) $(stat -c %s "$REPO/dists/set/main/binary-amd64/Packages")" >>"$content"
    local host=${DPEER[r4]%:*} port=${DPEER[r4]##*:}
    timeout 120 "$PY" "$HERE/peers.py" "$host" "$port" "$sid" "$content" "$NPEERS" 100 90 \
        >"$WORK/peers.out" 2>"$WORK/peers.err" &
    local ppid=$!
    PIDS+=("$ppid")
    local i n=0
    for i in $(seq 1 300); do
        n=$(torrent_of r4 set | jq -r '.peers | length')
        [ "$n" -ge "$NPEERS" ] && break
        sleep 0.1
    done
    [ "$n" -ge $((NPEERS * 9 / 10)) ] || note "(4) only $n peers connected after 30 s; peers.py: $(tail -n 1 "$WORK/peers.err")"
    sleep 5 # let them trade
    n=$(torrent_of r4 set | jq -r '.peers | length')
    S4_PEERS=$n
    S4_RSS=$(rss_mb "${DPID[r4]}")
    S4_HWM=$(hwm_mb "${DPID[r4]}")
    local st
    st=$(status r4)
    S4_DETAIL="uploaded $(jq -r '.bytes_uploaded' <<<"$st") B to the scripted peers; unchoked $(jq -r '[.torrents[] | .peers[]? | select(.unchoked)] | length' <<<"$st"); peers.py: $(tail -n 1 "$WORK/peers.err")"
    local pl
    pl=$(tail -n 1 "$WORK/peers.err")
    case $pl in
    *" informed=0 "*) note "(4) no scripted peer learned a file from the daemon's dt_hold: $pl" ;;
    esac
    case $pl in
    *" blocks=0 "*) note "(4) the scripted peers got no block: $pl" ;;
    esac
    case $pl in
    *ProtocolError*) note "(4) peers.py saw protocol errors from the daemon: $pl" ;;
    esac
    kill "$ppid" 2>/dev/null || true
    wait "$ppid" 2>/dev/null || true
    grep -q 'dropping peer' "$WORK/d/r4/stderr" 2>/dev/null &&
        note "(4) the daemon dropped $(grep -c 'dropping peer' "$WORK/d/r4/stderr") scripted peers, first: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/d/r4/stderr" | grep -m 1 -o 'dropping peer.*' | cut -c1-200)"
    stop_daemon r4
}

# ============================================================ scenario 5
S5_V2=nan S5_SUITE=nan S5_V2_SECS=nan S5_SUITE_SECS=nan S5_DETAIL=""
S5_DHT="    DHT load: not measured (DHT_SWARMS empty or scenario 5's DHT part skipped)"
# dht_snap FILE: "dir name packets bytes" per counter of the bench's nft
# table (dir: s = sent by that daemon's DHT socket, r = received), then a
# "t <unix time>" line.
dht_snap() {
    nft -j list table inet "$NFT_TABLE" |
        jq -r '.nftables[] | select(.rule) | .rule | "\(.comment) \(.expr[] | select(.counter) | .counter | "\(.packets) \(.bytes)")"' >"$1.tmp"
    echo "t $(date +%s.%N)" >>"$1.tmp"
    mv "$1.tmp" "$1"
}
# dht_rate A B PREFIX NODES: packets/s and bytes/s per node (sent +
# received) of the daemons named PREFIX* between snapshots A and B.
dht_rate() {
    awk -v pre="$3" -v nodes="$4" '
        FNR == 1 { f++ }
        $1 == "t" { t[f] = $2; next }
        index($2, pre) == 1 { p[f] += $3; b[f] += $4 }
        END {
            d = t[2] - t[1]
            if (d <= 0 || nodes <= 0) { print "nan nan 0"; exit }
            printf "%.2f %.0f %.1f\n", (p[2] - p[1]) / nodes / d, (b[2] - b[1]) / nodes / d, d
        }' "$1" "$2"
}
# Scenario 5, DHT load (issue: a daemon's announces must grow with the
# number of swarms it is in, not with the number of files it holds). For
# each N of DHT_SWARMS, a private DHT of DHT_NODES daemons (the first with
# no bootstrap, the others bootstrapping from it; the groups never meet),
# each daemon in the same N swarms: dists/dht's components c01..cN, one
# Packages of one file each, so N dt2 swarm ids. The groups run side by
# side. nft counts the UDP packets and IP bytes each daemon's DHT socket
# (its peer port) sends and receives; per group: the rate from the first
# registration to DHT_SETTLE s after the last one (lookups; the first three
# announces: when the first lookup ends, 10 s later, 60 s after that), then
# over the next DHT_WINDOW s (the steady state: a lookup a minute per swarm
# while it has fewer than 4 peers, announces every 15 min).
dht_load() {
    [ "$DHT_ON" = 1 ] || return 0
    local n k g=0 ip name
    NFT_TABLE="dtbench$$"
    if ! nft add table inet "$NFT_TABLE" 2>"$WORK/nft.err"; then
        note "(5) nft cannot add a table ($(head -c 200 "$WORK/nft.err")): no DHT load figures"
        NFT_TABLE=
        return 0
    fi
    log "(5) DHT load: $DHT_NODES daemons per private DHT, each in N swarms, N = $DHT_SWARMS (side by side)"
    for n in $DHT_SWARMS; do
        for k in $(seq 1 "$DHT_NODES"); do
            ip="127.0.0.$((70 + g * DHT_NODES + k))"
            if [ "$k" = 1 ]; then
                start_daemon "h${n}n$k" "$ip" --dht-bootstrap none
            else
                start_daemon "h${n}n$k" "$ip" --dht-bootstrap "${DPEER[h${n}n1]}"
            fi
        done
        g=$((g + 1))
    done
    {
        echo "table inet $NFT_TABLE {"
        echo "  chain out {"
        echo "    type filter hook output priority 0; policy accept;"
        for n in $DHT_SWARMS; do
            for k in $(seq 1 "$DHT_NODES"); do
                name="h${n}n$k"
                echo "    ip saddr ${DPEER[$name]%:*} udp sport ${DPEER[$name]##*:} counter comment \"s $name\""
            done
        done
        echo "  }"
        echo "  chain in {"
        echo "    type filter hook input priority 0; policy accept;"
        for n in $DHT_SWARMS; do
            for k in $(seq 1 "$DHT_NODES"); do
                name="h${n}n$k"
                echo "    ip daddr ${DPEER[$name]%:*} udp dport ${DPEER[$name]##*:} counter comment \"r $name\""
            done
        done
        echo "  }"
        echo "}"
    } >"$WORK/nft.rules"
    if ! nft -f "$WORK/nft.rules" 2>"$WORK/nft.err"; then
        note "(5) nft refused the counters ($(head -c 200 "$WORK/nft.err")): no DHT load figures"
        for n in $DHT_SWARMS; do for k in $(seq 1 "$DHT_NODES"); do stop_daemon "h${n}n$k"; done; done
        return 0
    fi
    # Per group, in the background: every daemon registers its N indexes
    # (one Release, then N Packages, as apt-get update does), all daemons
    # at once; then the two windows.
    local pids=() c
    for n in $DHT_SWARMS; do
        (
            dht_snap "$WORK/dht-$n.0"
            rp=()
            for k in $(seq 1 "$DHT_NODES"); do
                (
                    bad=0
                    for c in $(seq 1 "$n"); do
                        index "h${n}n$k" full dht "$(printf 'c%02d' "$c")" >/dev/null || bad=$((bad + 1))
                    done
                    echo "$bad" >"$WORK/dht-$n-n$k.bad"
                ) 2>>"$WORK/dht-$n.err" &
                rp+=($!)
            done
            for k in "${rp[@]}"; do wait "$k" || true; done
            date +%s.%N >"$WORK/dht-$n.registered"
            sleep "$DHT_SETTLE"
            dht_snap "$WORK/dht-$n.1"
            sleep "$DHT_WINDOW"
            dht_snap "$WORK/dht-$n.2"
        ) &
        pids+=($!)
        PIDS+=($!)
    done
    local limit=$((DHT_SETTLE + DHT_WINDOW + 300)) i alive
    for i in $(seq 1 $((limit * 10))); do
        alive=0
        for k in "${pids[@]}"; do kill -0 "$k" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for k in "${pids[@]}"; do
        kill -0 "$k" 2>/dev/null && { note "(5) DHT load: a group still running after $limit s"; kill "$k" 2>/dev/null || true; }
        wait "$k" 2>/dev/null || true
    done
    # The table.
    local first last row_sp row_sb row_rp row_rb row_n row_a rp rb sp sb d1 d2 st bad
    first=$(awk '{print $1}' <<<"$DHT_SWARMS")
    last=$(awk '{print $NF}' <<<"$DHT_SWARMS")
    declare -A SP SB RP RB
    row_n="" row_a="" row_sp="" row_sb="" row_rp="" row_rb=""
    for n in $DHT_SWARMS; do
        bad=$(cat "$WORK"/dht-"$n"-n*.bad 2>/dev/null | awk '{s+=$1} END {print s+0}')
        [ "$bad" = 0 ] || note "(5) DHT load, N=$n: $bad indexes not registered: $(head -c 300 "$WORK/dht-$n.err")"
        if [ -s "$WORK/dht-$n.2" ]; then
            read -r sp sb d2 < <(dht_rate "$WORK/dht-$n.1" "$WORK/dht-$n.2" "h${n}n" "$DHT_NODES")
            read -r rp rb d1 < <(dht_rate "$WORK/dht-$n.0" "$WORK/dht-$n.1" "h${n}n" "$DHT_NODES")
        else
            sp=nan sb=nan rp=nan rb=nan
        fi
        SP[$n]=$sp SB[$n]=$sb RP[$n]=$rp RB[$n]=$rb
        row_n+=$(printf '%10s' "$n")
        row_sp+=$(printf '%10s' "$sp")
        row_sb+=$(printf '%10s' "$sb")
        row_rp+=$(printf '%10s' "$rp")
        row_rb+=$(printf '%10s' "$rb")
        # Per daemon: swarms announced in the DHT, table nodes, and peers
        # connected per swarm (avg), from status.json.
        local ann=() nodes=() peers=()
        for k in $(seq 1 "$DHT_NODES"); do
            st=$(status "h${n}n$k" || echo '{}')
            ann+=("$(jq -r '.swarm.discovery.dht.announced // "?"' <<<"$st")")
            nodes+=("$(jq -r '.swarm.discovery.dht.nodes // "?"' <<<"$st")")
            peers+=("$(jq -r '[.torrents[]? | select(.index_path | contains("dists/dht/")) | (.peers // []) | length] | if length > 0 then (add / length * 10 | round / 10) else "?" end' <<<"$st")")
        done
        row_a+="N=$n: announced ${ann[*]}, table ${nodes[*]}, peers/swarm ${peers[*]}; "
    done
    local lbl_s="steady, ${DHT_WINDOW} s window" lbl_r="registration + ${DHT_SETTLE} s"
    S5_DHT="    DHT load: $DHT_NODES daemons per private DHT, every daemon in the same N swarms; UDP packets and IP bytes its
    DHT socket sent + received (nft counters), per node per second
$(printf '    %-40s%s %10s' "swarms per daemon" "$row_n" "$last vs $first")
$(printf '    %-28s%-12s%s %10s' "$lbl_s" "packets/s" "$row_sp" "$(ratio "${SP[$last]}" "${SP[$first]}")")
$(printf '    %-28s%-12s%s %10s' "" "bytes/s" "$row_sb" "$(ratio "${SB[$last]}" "${SB[$first]}")")
$(printf '    %-28s%-12s%s %10s' "$lbl_r" "packets/s" "$row_rp" "$(ratio "${RP[$last]}" "${RP[$first]}")")
$(printf '    %-28s%-12s%s %10s' "" "bytes/s" "$row_rb" "$(ratio "${RB[$last]}" "${RB[$first]}")")
    per daemon at the end (status.json): $row_a"
    for n in $DHT_SWARMS; do for k in $(seq 1 "$DHT_NODES"); do stop_daemon "h${n}n$k"; done; done
    nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    NFT_TABLE=
}
# measure_list NAME SUITE FILE: NAME registers SUITE, then fetches the
# packages of FILE; sets M_RATIO (mirror pool bytes / their size) and
# M_SECS.
M_RATIO=nan M_SECS=nan
measure_list() {
    local name=$1 suite=$2 file=$3 t0 bad b size
    index "$name" full "$suite" >/dev/null
    mirror_reset
    t0=$(date +%s.%N)
    bad=$(fetch_list "$name" full "$file")
    M_SECS=$(secs_since "$t0")
    [ "$bad" = 0 ] || note "(5) $name had $bad failed packages"
    b=$(mirror_pool_bytes)
    size=$(awk '{s+=$2} END {print s}' "$file")
    M_RATIO=$(awk -v a="$b" -v s="$size" 'BEGIN { printf "%.3f", a/s }')
}
scenario5() {
    # The files of setv2 that set also lists (all but the upgraded and the
    # added one), and all of set-updates: a peer holds every one of them.
    local common="$WORK/s5-common.files" bad
    awk 'NR==FNR {have[$3]=1; next} ($3 in have)' "$REPO/set.files" "$REPO/setv2.files" >"$common"
    local csize
    csize=$(awk '{s+=$2} END {print s}' "$common")
    log "(5) index update: u1 holds the set through its first index version"
    start_daemon u1 127.0.0.41 --dht-bootstrap none
    index u1 full set >/dev/null
    bad=$(fetch_set u1 full)
    [ "$bad" = 0 ] || note "(5) u1 had $bad failed packages"
    start_daemon u2 127.0.0.42 --dht-bootstrap "${DPEER[u1]}"
    start_daemon u3 127.0.0.43 --dht-bootstrap "${DPEER[u1]}"
    sleep 2
    log "(5) u2 sees only the next index version; takes the files both versions list"
    measure_list u2 setv2 "$common"
    S5_V2=$M_RATIO S5_V2_SECS=$M_SECS
    log "(5) u3 lists the same files through another suite (set-updates)"
    measure_list u3 set-updates "$REPO/set-updates.files"
    S5_SUITE=$M_RATIO S5_SUITE_SECS=$M_SECS
    S5_DETAIL="common files $(wc -l <"$common"), $csize bytes; dt2 swarm ids (u1 set, u2 setv2, u3 set-updates): $(torrent_of u1 set | jq -r '.swarm_id // "n/a"' | cut -c1-12) $(torrent_of u2 setv2 | jq -r '.swarm_id // "n/a"' | cut -c1-12) $(torrent_of u3 set-updates | jq -r '.swarm_id // "n/a"' | cut -c1-12)"
    stop_daemon u3
    stop_daemon u2
    stop_daemon u1
    dht_load
}

for s in $SCENARIOS; do
    case $s in
    1) scenario1 ;;
    2) scenario2 ;;
    3) scenario3 ;;
    4) scenario4 ;;
    5) scenario5 ;;
    *) echo "bench: unknown scenario $s" >&2 ;;
    esac
done

# ----------------------------------------------------------------- report
cat <<EOF

debtorrent swarm benchmark — $(date -u +%FT%TZ), $(nproc) cores, load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)
binary: $DEBTORRENT_BIN; all traffic on 127.0.0.0/8; total $(($(date +%s) - T_START)) s
MB = 10^6 bytes

(1) one seed -> one leecher, a $BIG-byte package, median of $RUNS (MB/s)
    debtorrent seed -> leecher   $(fmt "$S1_OURS")   runs: ${S1_RUNS:-none}  (request to last byte; warm-up 1 MB first: ${S1_WARM:-n/a})
    libtorrent 2.0.8, TCP only   $(fmt "$S1_LT")   runs: ${S1_LT_RUNS:-none}  (connect_peer to is_seeding; ${S1_LT_INFO:-})
    ratio ours / libtorrent      $(ratio "$S1_OURS" "$S1_LT")   (target >= 3)
    SHA-256, one core (ceiling)  $(fmt "$S1_SHA" 0) (hashlib/OpenSSL), $(fmt "$S1_SHASUM" 0) (sha256sum)   ours / ceiling $(ratio "$S1_OURS" "$S1_SHA")
    seed's own fill from nginx   $(fmt "$S1_SEEDFILL" 0)
    leecher counters             ${S1_CHECK:-n/a}
    daemon CPU during the 1 GB   ${S1_CPU:-n/a}
    CPU s per GB (medians)       leecher $(fmt "$(pergb "$S1_LCPU")" 2), seed $(fmt "$(pergb "$S1_SCPU")" 2) (goal <= 0.3), openssl dgst -sha256 $(fmt "$(pergb "$S1_OSSL")" 2) (runs: ${S1_OSSL_RUNS:-n/a}s)
    leecher / openssl CPU        $(ratio "$S1_LCPU" "$S1_OSSL")   (goal <= 1.4); instructions: ${S1_IPB:-n/a}
    nginx sending it to curl     $(fmt "$(pergb "$S1_NGX")" 2) s per GB (runs: ${S1_NGX_RUNS:-n/a}s): the delivery to apt alone
    dd into a new file           $(fmt "$(pergb "$S1_DD")" 2) s per GB (runs: ${S1_DD_RUNS:-n/a}s): a copy out and the page-cache write, the storing alone
    leecher / (openssl + nginx)  $(ratio "$S1_LCPU" "$(awk -v a="$S1_OSSL" -v b="$S1_NGX" 'BEGIN { if (a == "nan" || b == "nan") print "nan"; else print a + b }')")   (hash once + hand over once)
    leecher / (all three)        $(ratio "$S1_LCPU" "$(awk -v a="$S1_OSSL" -v b="$S1_NGX" -v c="$S1_DD" 'BEGIN { if (a == "nan" || b == "nan" || c == "nan") print "nan"; else print a + b + c }')")   (hash once + hand over once + store once; the three count one copy out more than a leecher makes)

(2) 8 daemons, a set of $SET_N packages, $SET_SIZE bytes: mirror pool bytes / set size
    one after another            $S2_SEQ   (target ~1.0; $(fmt "$S2_SEQ_SECS" 1) s; each daemon starts, fetches the index, then the set)
    one after another, settled   $S2_SEQ2   ($(fmt "$S2_SEQ2_SECS" 1) s; all 8 indexes registered 61 s before the first fetch)
    all 8 at once                $S2_CONC   (target <= 1.5; $(fmt "$S2_CONC_SECS" 1) s)
    sequential: $S2_SEQ_DETAIL
    settled:    $S2_SEQ2_DETAIL
    concurrent: $S2_CONC_DETAIL

(3) 10 MB/s mirror, 4 peers holding the set: time for the whole set (s)
    5th daemon with peers        $(fmt "$S3_PEERS" 2)
    --no-peers, mirror only      $(fmt "$S3_MIRROR" 2)
    speedup                      $(ratio "$S3_MIRROR" "$S3_PEERS")   (target >= 3)
    $S3_DETAIL

(4) RSS with $NPEERS scripted peer connections
    VmRSS                        $S4_RSS MB with $S4_PEERS peers connected   (goal <= 60; before the peers $S4_BASE MB; VmHWM $S4_HWM MB)
    $S4_DETAIL

(5) index update: mirror pool bytes / bytes a peer already held (issue 11 target <= 0.05)
    next index version (v1 -> v2) $S5_V2   ($(fmt "$S5_V2_SECS" 1) s; the files both versions list)
    another suite, same files     $S5_SUITE   ($(fmt "$S5_SUITE_SECS" 1) s)
    $S5_DETAIL
$S5_DHT
EOF
if [ "${#NOTES[@]}" -gt 0 ]; then
    echo
    echo "problems seen:"
    for n in "${NOTES[@]}"; do echo "  - $n"; done
fi
