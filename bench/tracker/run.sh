#!/usr/bin/env bash
# debtorrent-tracker vs opentracker, side by side, one command:
#
#   bench/tracker/run.sh            # RUNS=3 SECS=10 by default
#
# For each tracker (pinned to core 0 with taskset; load generators on
# core 1): load 100,000 peers across 10,000 torrents over UDP and report
# resident memory per stored peer; then RUNS runs of SECS seconds each of
# HTTP announces (wrk + announce.lua) and UDP announces (udp_load), random
# peers among the 100,000. Prints the median announces/s, tracker CPU time
# per announce, and the ratio ours/opentracker. Everything on 127.0.0.1;
# every loop and wait is bounded.
set -euo pipefail

RUNS=${RUNS:-3}
SECS=${SECS:-10}
TORRENTS=${TORRENTS:-10000}
PEERS=${PEERS:-100000}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

for tool in wrk opentracker taskset curl python3 cargo; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (apt-get install wrk opentracker util-linux curl python3)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "run.sh: needs 2 cores (tracker on 0, load on 1)" >&2; exit 1; }

echo "building (release)..." >&2
(cd "$root" && cargo build --release -q -p debtorrent-tracker --bin debtorrent-tracker --example udp_load)
BIN=$root/target/release/debtorrent-tracker
LOAD=$root/target/release/examples/udp_load

work=$(mktemp -d)
# opentracker drops privileges (to nobody) before reading its whitelist.
chmod 755 "$work"
PID=
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$LOAD" hashes "$TORRENTS" > "$work/hashes.txt"
chmod 644 "$work/hashes.txt"
HZ=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket
t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", p)); print(p)'
}

# probe HOST:PORT: announce a peer for the last torrent, check that it was
# accepted (opentracker answers `stopped` even for torrents it refuses, so
# the probe must be a real announce), then remove it again.
probe() {
    local h url
    h=$(tail -1 "$work/hashes.txt" | sed 's/../%&/g')
    url="http://$1/announce?info_hash=$h&peer_id=-PROBE-0000000000000&port=9&left=0"
    curl -s --max-time 1 "$url&event=started" 2>/dev/null | grep -q '^d8:complete' || return 1
    curl -s --max-time 1 "$url&event=stopped" >/dev/null 2>&1
}

start_ours() {
    rm -rf "$work/ours"
    taskset -c 0 "$BIN" --http-listen 127.0.0.1:0 --udp-listen 127.0.0.1:0 \
        --data-dir "$work/ours" --log warn --snapshot-interval 3600 \
        --max-peers-total 10000000 > "$work/ours.out" &
    PID=$!
    for _ in $(seq 100); do grep -q listening "$work/ours.out" 2>/dev/null && break; sleep 0.1; done
    HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$work/ours.out")
    UDP=$(sed -n 's/.*udp=\([^ ]*\).*/\1/p' "$work/ours.out")
    [ -n "$HTTP" ] || { echo "debtorrent-tracker did not start" >&2; exit 1; }
}

start_opentracker() {
    local p; p=$(free_port)
    (cd "$work" && exec taskset -c 0 opentracker -i 127.0.0.1 -p "$p" -P "$p" -w "$work/hashes.txt" >/dev/null 2>&1) &
    PID=$!
    HTTP=127.0.0.1:$p
    UDP=127.0.0.1:$p
    # opentracker loads its whitelist in the background: wait for it.
    for _ in $(seq 100); do
        if probe "$HTTP"; then return; fi
        sleep 0.1
    done
    echo "opentracker did not accept the whitelisted torrent" >&2; exit 1
}

stop_tracker() {
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# fill NAME PID UDP: load the 100,000 peers, record RSS before and after.
fill() {
    local rss0 rss1
    rss0=$(rss_kb "$2")
    taskset -c 1 "$LOAD" fill "$3" "$TORRENTS" "$PEERS" >/dev/null
    sleep 0.5
    rss1=$(rss_kb "$2")
    echo "$1 rss_before_kb=$rss0 rss_after_kb=$rss1" >&2
    echo "$rss0 $rss1" > "$work/$1.mem"
}

# run_http NAME PID HTTP / run_udp NAME PID UDP: one timed run; appends
# "announces/s tracker-cpu-ticks" to $work/NAME.{http,udp}.
run_http() {
    local t0 t1 out rps
    t0=$(cpu_ticks "$2")
    out=$(taskset -c 1 env BENCH_HASHES="$work/hashes.txt" BENCH_PEERS="$PEERS" \
        wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECS}s" --timeout 2s -s "$here/announce.lua" "http://$3/announce")
    t1=$(cpu_ticks "$2")
    if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "$1: HTTP errors" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    echo "$rps $(( t1 - t0 ))" >> "$work/$1.http"
    echo "$1 http announces/s=$rps cpu_ticks=$(( t1 - t0 ))" >&2
}
run_udp() {
    local t0 t1 out rps
    t0=$(cpu_ticks "$2")
    out=$(taskset -c 1 "$LOAD" load "$3" "$TORRENTS" "$PEERS" "$SECS")
    t1=$(cpu_ticks "$2")
    rps=$(echo "$out" | sed -n 's/announces_per_sec=//p')
    echo "$rps $(( t1 - t0 ))" >> "$work/$1.udp"
    echo "$1 udp announces/s=$rps cpu_ticks=$(( t1 - t0 ))" >&2
}

# Both trackers run at the same time, both pinned to core 0 (each idle
# while the other is measured), and their runs are interleaved, so that
# whatever else the machine is doing affects both alike.
start_ours
OURS_PID=$PID OURS_HTTP=$HTTP OURS_UDP=$UDP
probe "$OURS_HTTP" || { echo "ours refused the probe" >&2; exit 1; }
start_opentracker
OT_PID=$PID OT_HTTP=$HTTP OT_UDP=$UDP
PID=
cleanup() {
    for p in ${OURS_PID:-} ${OT_PID:-}; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

fill ours "$OURS_PID" "$OURS_UDP"
fill opentracker "$OT_PID" "$OT_UDP"
: > "$work/ours.http"; : > "$work/ours.udp"; : > "$work/opentracker.http"; : > "$work/opentracker.udp"
for r in $(seq "$RUNS"); do
    echo "run $r/$RUNS" >&2
    run_http ours "$OURS_PID" "$OURS_HTTP"
    run_http opentracker "$OT_PID" "$OT_HTTP"
    run_udp ours "$OURS_PID" "$OURS_UDP"
    run_udp opentracker "$OT_PID" "$OT_UDP"
done
stats=$(curl -s --max-time 5 "http://$OURS_HTTP/stats.json")
ours_peers=$(echo "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["peers"])')
ours_failures=$(echo "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http_failures"])')
# opentracker must have accepted the announces too: its peers are listed.
probe "$OT_HTTP" || { echo "opentracker refused the probe after the runs" >&2; exit 1; }
PID=$OURS_PID; stop_tracker
PID=$OT_PID; stop_tracker

report() {
    python3 - "$work" "$RUNS" "$SECS" "$PEERS" "$HZ" "$ours_peers" "$ours_failures" <<'PY'
import sys, statistics
work, runs, secs, peers, hz, ours_peers, failures = sys.argv[1:8]
secs, peers, hz = float(secs), int(peers), int(hz)
def load(name, proto):
    rows = [tuple(map(float, l.split())) for l in open(f"{work}/{name}.{proto}") if l.strip()]
    rps = statistics.median(r[0] for r in rows)
    # tracker CPU per answered announce, median over runs
    us = statistics.median((r[1] / hz) / (r[0] * secs) * 1e6 for r in rows if r[0] > 0)
    return rps, us
print(f"debtorrent-tracker vs opentracker: {runs} runs x {secs:.0f} s, tracker on core 0, load on core 1")
print(f"{'':24}{'ours':>14}{'opentracker':>14}{'ours/ot':>9}")
for proto in ("http", "udp"):
    (a, ua), (b, ub) = load("ours", proto), load("opentracker", proto)
    print(f"{proto.upper() + ' announces/s':24}{a:14,.0f}{b:14,.0f}{a / b:9.2f}")
    print(f"{proto.upper() + ' tracker CPU us/ann':24}{ua:14.2f}{ub:14.2f}{ua / ub:9.2f}")
for name in ("ours", "opentracker"):
    r0, r1 = map(int, open(f"{work}/{name}.mem").read().split())
    print(f"{name:12} RSS {r0 / 1024:6.1f} MB empty, {r1 / 1024:6.1f} MB with {peers:,} peers: "
          f"{(r1 - r0) * 1024 / peers:5.1f} bytes/peer (delta), {r1 * 1024 / peers:5.1f} bytes/peer (total)")
print(f"ours: {ours_peers} peers stored after the runs, {failures} HTTP failures; load average now: {open('/proc/loadavg').read().split()[0]}")
PY
}
report
