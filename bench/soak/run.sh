#!/usr/bin/env bash
# bench/soak/run.sh — a bounded soak of the daemon with real apt clients
# (issue 16, item 3), all traffic on 127.0.0.0/8:
#   phase A: $CLIENTS apt clients, each with its own private apt root, loop
#            for $DURATION s through ONE daemon (127.0.0.11): apt-get update,
#            apt-get install --download-only of a random subset of the e2e
#            fixture's packages, then empty its archives so the next round
#            downloads again. Optional: $SLOWLORIS slow request heads against
#            the daemon at the same time (slowloris.py).
#   phase B: the same clients spread over a private swarm of $SWARM daemons
#            (127.0.0.21.., private DHT, no LSD) for $DURATION s.
# The mirror is nginx on 127.0.0.1 serving the signed e2e fixture.
# Reported per phase: runs, failed runs (first apt error lines), and per
# daemon VmRSS, open fds, threads, peer connections (status.json
# .swarm.connections), apt connections (ss), SQLite size (state.db + -wal)
# at the start and the end (ratios end/start) and min/max of the samples
# taken every $SAMPLE_SECS s (CSV: samples.csv in the work folder).
#
# Usage: bench/soak/run.sh           (builds target/release/debtorrent and
#                                     exports the e2e fixture first)
# Env:   CLIENTS=64 DURATION=600 SLOWLORIS=0 PHASES="A B" SWARM=4
#        SAMPLE_SECS=30 APT_TIMEOUT=120 (per apt-get call) BIG_PCT=10 (chance
#        of the 54.5 MB bigpkg in a round) WARMUP=60 (seconds of the same
#        rounds before the start sample) SETTLE=5 (idle seconds before a
#        sample)
#        SEED=n (client random choices) DEBTORRENT_BIN=path FIXTURE=dir
#        KEEP=1 keeps the work folder (CSV, apt roots, daemon and nginx logs)
# Every apt-get call runs under `timeout`, every loop ends; every process
# started here is stopped at exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/apt-root.sh
. "$HERE/../lib/apt-root.sh"
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-600}
SLOWLORIS=${SLOWLORIS:-0}
PHASES=${PHASES:-A B}
SWARM=${SWARM:-4}
SAMPLE_SECS=${SAMPLE_SECS:-30}
APT_TIMEOUT=${APT_TIMEOUT:-120}
BIG_PCT=${BIG_PCT:-10}
WARMUP=${WARMUP:-60}
SETTLE=${SETTLE:-5}
SEED=${SEED:-$$}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

for v in CLIENTS DURATION SLOWLORIS SWARM SAMPLE_SECS APT_TIMEOUT BIG_PCT WARMUP SETTLE SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "soak: $v=${!v} is not a number" >&2; exit 1; }
done
[ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 1000 ] || { echo "soak: CLIENTS must be 1..1000" >&2; exit 1; }
[ "$SWARM" -ge 1 ] && [ "$SWARM" -le 50 ] || { echo "soak: SWARM must be 1..50" >&2; exit 1; }
[ "$SAMPLE_SECS" -ge 1 ] || { echo "soak: SAMPLE_SECS must be >= 1" >&2; exit 1; }
[ "$APT_TIMEOUT" -ge 1 ] || { echo "soak: APT_TIMEOUT must be >= 1" >&2; exit 1; }
for p in $PHASES; do case $p in A | B) ;; *) echo "soak: unknown phase $p (A, B)" >&2; exit 1 ;; esac; done

need() { command -v "$1" >/dev/null 2>&1 || { echo "soak: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need nginx nginx-light
need apt-get apt
need gpgv gpgv
need curl curl
need jq jq
need ss iproute2
need timeout coreutils
[ -n "$PY" ] || { echo "soak: missing python3" >&2; exit 1; }

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/dt-soak.XXXXXX)
chmod 755 "$WORK"
PIDS=()    # nginx, daemons, slowloris, sampler (removed once reaped)
CPIDS=()   # client loops (each runs `timeout apt-get` in its own process group)
cleanup() {
    local p f i alive
    set +e
    for p in "${CPIDS[@]}"; do kill "$p" 2>/dev/null; done
    # A client's apt-get runs under timeout(1), which makes its own process
    # group (apt-get and its methods in it); its id is in the client's cur.pid.
    for f in "$WORK"/c/*/cur.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f" 2>/dev/null)
        [ -n "$p" ] && kill -- "-$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for i in $(seq 1 50); do
        alive=0
        for p in "${PIDS[@]}" "${CPIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}" "${CPIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "soak: kept $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# unpid PID: PID was reaped; never signal it again (its number may be reused).
unpid() {
    local i
    for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" != "$1" ] || unset 'PIDS[i]'; done
}
log() { echo "soak: [$((EPOCHSECONDS - T_START))s] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() {
    local ip=$1 p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        port_open "$ip" "$p" || { echo "$p"; return 0; }
    done
    return 1
}
wait_port() {
    local i
    for i in $(seq 1 200); do port_open "$1" "$2" && return 0; sleep 0.05; done
    echo "soak: nothing listens on $1:$2 after 10 s" >&2
    return 1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "n/a" || b == "n/a" || b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }

# ------------------------------------------------------------ binary, fixture
if [ -z "${DEBTORRENT_BIN:-}" ]; then
    log "building target/release/debtorrent (cargo build --release --locked)"
    (cd "$TOP" && cargo build -q --release --locked)
    DEBTORRENT_BIN="$TOP/target/release/debtorrent"
fi
[ -x "$DEBTORRENT_BIN" ] || { echo "soak: $DEBTORRENT_BIN is not an executable" >&2; exit 1; }
# A private copy: a rebuild by someone else during the run changes nothing.
cp "$DEBTORRENT_BIN" "$WORK/debtorrent"
BIN="$WORK/debtorrent"
BIN_INFO="$DEBTORRENT_BIN (sha256 $(sha256sum "$BIN" | cut -c1-12), built $(date -u -r "$DEBTORRENT_BIN" +%FT%TZ))"
if [ -z "${FIXTURE:-}" ]; then
    log "exporting the e2e fixture (signed repository)"
    FIXTURE="$WORK/fixture"
    (cd "$TOP" && DEBTORRENT_E2E_EXPORT="$FIXTURE" cargo test -q --locked --test e2e -- \
        --ignored --exact baseline::export_fixture_for_bench >/dev/null)
fi
REPO="$FIXTURE/repo"
KEYRING="$FIXTURE/archive-keyring.gpg"
[ -f "$REPO/dists/stable/InRelease" ] && [ -f "$FIXTURE/pool-files.txt" ] ||
    { echo "soak: no fixture at $FIXTURE" >&2; exit 1; }
# Binary packages (no dependencies between them): name size.
mapfile -t SMALL_PKGS < <(awk '$4 ~ /\.deb$/ && $1 != "bigpkg" {print $1}' "$FIXTURE/pool-files.txt")
HAVE_BIG=$(awk '$1 == "bigpkg" {n++} END {print n+0}' "$FIXTURE/pool-files.txt")
[ "${#SMALL_PKGS[@]}" -gt 0 ] || { echo "soak: no packages in $FIXTURE/pool-files.txt" >&2; exit 1; }

# ------------------------------------------------------------------- nginx
NGINX_IP=127.0.0.1
NGINX_PORT=$(free_port "$NGINX_IP")
MIRROR="$NGINX_IP:$NGINX_PORT"
mkdir -p "$WORK/nginx/tmp"
ACCESS="$WORK/nginx/access.log"
NGINX_USER=
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
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
        listen $MIRROR;
        location /debian/ { alias $REPO/; }
    }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port "$NGINX_IP" "$NGINX_PORT"
log "nginx (the mirror) on $MIRROR"
# Mirror requests/bytes since the last reset (nginx appends with O_APPEND,
# so truncating the log starts a new count).
mirror_reset() { : >"$ACCESS"; }
mirror_stats() {
    awk '{n++; b+=$2; if ($1 ~ /\/pool\//) pb+=$2; if ($3 !~ /^(200|206|304)$/) bad[$3]++}
         END {s=""; for (k in bad) s=s " " k "x" bad[k];
              printf "%d requests, %.1f MB (pool %.1f MB), other statuses:%s\n", n, b/1e6, pb/1e6, (s == "" ? " none" : s)}' "$ACCESS"
}

# ---------------------------------------------------------------- daemons
declare -A DPID DHTTP DDATA DPEERADDR
DNAMES=()   # daemons of the current phase
# start_daemon NAME IP BOOTSTRAP: fresh data folder, HTTP on a free port,
# BitTorrent on IP:0 (a free port), no LSD, DHT bootstrap BOOTSTRAP
# ("none" or ADDR): nothing leaves 127.0.0.0/8.
start_daemon() {
    local name=$1 ip=$2 boot=$3 p i
    p=$(free_port "$ip") || { echo "soak: no free port on $ip" >&2; return 1; }
    mkdir -p "$WORK/d/$name/data"
    "$BIN" serve --listen "$ip:$p" --data-dir "$WORK/d/$name/data" --peer-addr "$ip:0" \
        --dht-bootstrap "$boot" --no-lsd --allow-port "$NGINX_PORT" --log-level warn \
        >"$WORK/d/$name/stdout" 2>"$WORK/d/$name/stderr" &
    DPID[$name]=$!
    PIDS+=("$!")
    DHTTP[$name]="$ip:$p"
    DDATA[$name]="$WORK/d/$name/data"
    wait_port "$ip" "$p"
    DPEERADDR[$name]=
    for i in $(seq 1 50); do
        DPEERADDR[$name]=$(status "$name" | jq -r '.swarm.peer_addr // empty' 2>/dev/null || true)
        [ -n "${DPEERADDR[$name]}" ] && break
        sleep 0.1
    done
    DNAMES+=("$name")
}
stop_daemon() {
    local name=$1 p i
    p=${DPID[$name]:-}
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unpid "$p"
    DPID[$name]=
}
status() { curl -s --max-time 5 "http://${DHTTP[$1]}/status.json"; }

# ---------------------------------------------------------------- samples
CSV="$WORK/samples.csv"
echo "epoch,elapsed_s,phase,tag,daemon,pid,rss_kb,fds,threads,peer_connections,apt_connections,state_db_bytes,state_wal_bytes" >"$CSV"
# sample PHASE TAG NAME: one CSV line for daemon NAME (also to stdout).
sample() {
    local -
    set +e +o pipefail
    local phase=$1 tag=$2 name=$3 pid rss thr fds conns aptc db wal st
    pid=${DPID[$name]}
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    st=$(status "$name" 2>/dev/null || true)
    conns=$(jq -r '.swarm.connections // "n/a"' <<<"$st" 2>/dev/null || true)
    # Established TCP connections on the daemon's apt port (apt clients and
    # slow heads).
    aptc=$(ss -Htn state established "( sport = :${DHTTP[$name]##*:} )" 2>/dev/null |
        awk -v a="${DHTTP[$name]}" '$3 == a {n++} END {print n+0}')
    db=$(stat -c %s "${DDATA[$name]}/state.db" 2>/dev/null || echo 0)
    wal=$(stat -c %s "${DDATA[$name]}/state.db-wal" 2>/dev/null || echo 0)
    echo "$EPOCHSECONDS,$((EPOCHSECONDS - T_START)),$phase,$tag,$name,$pid,${rss:-n/a},$fds,${thr:-n/a},${conns:-n/a},$aptc,$db,$wal" | tee -a "$CSV"
}
# sampler PHASE STOPFILE: every SAMPLE_SECS s a "run" sample of each daemon
# of the phase, until STOPFILE exists (checked each second).
sampler() {
    local phase=$1 stop=$2 i n
    set +e
    while :; do
        for i in $(seq 1 "$SAMPLE_SECS"); do
            [ -e "$stop" ] && return 0
            sleep 1
        done
        [ -e "$stop" ] && return 0
        for n in "${DNAMES[@]}"; do sample "$phase" run "$n" >/dev/null; done
    done
}

# ------------------------------------------------------------ apt clients
# mk_client I: a private apt root (sources, lists, archives, state, log).
mk_client() {
    local r="$WORK/c/$1"
    apt_root "$r"
}
# point_client I DAEMON: prefix mode through DAEMON.
point_client() {
    printf 'deb [signed-by=%s] http://%s/%s/debian stable main\n' "$KEYRING" "${DHTTP[$2]}" "$MIRROR" \
        >"$WORK/c/$1/etc/apt/sources.list"
}
# apt_call ROOT OUT ARGS...: apt-get under timeout, in the background so the
# timeout's process group id can be noted for cleanup; returns its status.
apt_call() {
    local r=$1 out=$2 tp rc
    shift 2
    env -i PATH="$PATH" LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive APT_CONFIG="$r/apt.conf" \
        timeout "$APT_TIMEOUT" apt-get -q -y "$@" >"$out" 2>&1 </dev/null &
    tp=$!
    echo "$tp" >"$r/cur.pid"
    wait "$tp"
    rc=$?
    : >"$r/cur.pid"
    return "$rc"
}
# client_loop I PHASE MODE END: rounds until the epoch second END (MODE is
# "warm" or "run", only a label). One line per round in ROOT/results:
#   phase mode client round start_epoch seconds step rc packages
# and, for a failed round, its first error lines in ROOT/failures.
client_loop() {
    local id=$1 phase=$2 mode=$3 end=$4 r="$WORK/c/$1" round=0
    local pkgs n t0 step rc bad p
    set +e
    RANDOM=$(((SEED * 7919 + id * 104729 + ${#phase} + ${#mode}) % 32768))
    while :; do
        [ "$EPOCHSECONDS" -lt "$end" ] || break
        round=$((round + 1))
        pkgs=()
        for p in "${SMALL_PKGS[@]}"; do [ $((RANDOM % 2)) = 1 ] && pkgs+=("$p"); done
        [ "$HAVE_BIG" = 1 ] && [ $((RANDOM % 100)) -lt "$BIG_PCT" ] && pkgs+=(bigpkg)
        [ "${#pkgs[@]}" -gt 0 ] || pkgs=("${SMALL_PKGS[$((RANDOM % ${#SMALL_PKGS[@]}))]}")
        n=${#pkgs[@]}
        t0=$EPOCHREALTIME
        step=update
        apt_call "$r" "$r/out.update" update
        rc=$?
        bad=$(grep -cE '^(E:|W:|Err:)' "$r/out.update")
        [ "$rc" = 0 ] && [ "$bad" != 0 ] && rc=warn
        if [ "$rc" = 0 ]; then
            step=install
            apt_call "$r" "$r/out.install" install --download-only "${pkgs[@]}"
            rc=$?
            bad=$(grep -cE '^(E:|W:|Err:)' "$r/out.install")
            [ "$rc" = 0 ] && [ "$bad" != 0 ] && rc=warn
        fi
        if [ "$rc" = 0 ]; then
            step=verify
            local got
            got=$(find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l)
            [ "$got" = "$n" ] || rc="debs=$got"
        fi
        echo "$phase $mode $id $round ${t0%.*} $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b-a}') $step $rc $n" >>"$r/results"
        if [ "$rc" != 0 ]; then
            {
                echo "phase $phase ($mode) client $id round $round: $step failed (rc $rc$([ "$rc" = 124 ] && echo ", timed out after $APT_TIMEOUT s"))"
                if [ "$step" = verify ]; then
                    echo "  archives hold $(find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l) of $n: ${pkgs[*]}"
                elif grep -qE '^(E:|W:|Err:)' "$r/out.$step"; then
                    grep -E '^(E:|W:|Err:)' "$r/out.$step" | head -4 | sed 's/^/  /'
                else
                    tail -3 "$r/out.$step" | sed 's/^/  /'
                fi
            } >>"$r/failures"
        fi
        rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/archives/partial/*
        # A failing round can be instant (daemon gone): never spin.
        [ "$rc" = 0 ] || sleep 1
    done
}
# clients PHASE MODE END: all clients at once; waits for them all (each
# apt-get call is bounded by APT_TIMEOUT).
clients() {
    local i
    CPIDS=()
    for i in $(seq 1 "$CLIENTS"); do
        client_loop "$i" "$1" "$2" "$3" &
        CPIDS+=($!)
    done
    for i in "${CPIDS[@]}"; do wait "$i" || true; done
    CPIDS=()
}

# ----------------------------------------------------------------- report
# results_of PHASE MODE: every round line of the phase.
results_of() { cat "$WORK"/c/*/results 2>/dev/null | awk -v p="$1" -v m="$2" '$1 == p && $2 == m'; }
failures_of() {
    cat "$WORK"/c/*/failures 2>/dev/null | awk -v h="phase $1 ($2) " '
        /^phase / { keep = (index($0, h) == 1) } keep'
}
# samples_of PHASE NAME COL: the column (name) of the phase's samples of NAME.
col_of() {
    awk -F, -v p="$1" -v d="$2" -v c="$3" -v t="${4:-}" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        $3 == p && $5 == d && (t == "" || $4 == t) && $4 != "cold" { print $k }' "$CSV"
}
fmt_mb() { awk -v a="$1" 'BEGIN { if (a == "" || a == "n/a") print "n/a"; else printf "%.1f", a/1024 }'; }
fmt_kb() { awk -v a="$1" 'BEGIN { if (a == "" || a == "n/a") print "n/a"; else printf "%.0f", a/1024 }'; }
minmax() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END { if (NR == 0) print "n/a n/a"; else print lo, hi }'; }
verdict() { awk -v r="$1" 'BEGIN { if (r == "n/a") print ""; else if (r+0 <= 1.10) print "ok"; else print "OVER (goal <= 1.10)" }'; }

declare -A REPORT SUMMARY
# phase_report PHASE LABEL: builds REPORT[PHASE] and SUMMARY[PHASE].
phase_report() {
    local -
    set +e +o pipefail
    local phase=$1 label=$2 rows runs fails out name f
    rows=$(results_of "$phase" run)
    runs=$(grep -c . <<<"$rows" || true)
    fails=$(awk '$8 != "0"' <<<"$rows" | grep -c . || true)
    local wrows wruns wfails
    wrows=$(results_of "$phase" warm)
    wruns=$(grep -c . <<<"$wrows" || true)
    wfails=$(awk '$8 != "0"' <<<"$wrows" | grep -c . || true)
    local times per
    times=$(awk '$8 == "0" {print $6}' <<<"$rows" | sort -g |
        awk '{a[NR] = $1} END { if (NR == 0) print "n/a"; else printf "median %.1f, p95 %.1f, max %.1f", a[int((NR+1)/2)], a[int(NR*0.95+0.999)], a[NR] }')
    per=$(awk 'NF {n[$3]++} END { lo = -1; for (k in n) { if (lo < 0 || n[k] < lo) lo = n[k]; if (n[k] > hi) hi = n[k] } printf "%d..%d", lo < 0 ? 0 : lo, hi }' <<<"$rows")
    local bystep
    bystep=$(awk '$8 != "0" {s[$7 " rc " $8]++} END { for (k in s) printf "%s%s x%d", (n++ ? ", " : ""), k, s[k] }' <<<"$rows")
    out="phase $phase: $label
  rounds                 $runs   failed $fails${bystep:+ ($bystep)}   rounds per client $per
  round seconds (ok)     $times   (update + install --download-only)
  warm-up rounds         $wruns in $WARMUP s, $wfails failed
  mirror (nginx)         ${PHASE_MIRROR[$phase]}
"
    if [ "$fails" != 0 ] || [ "$wfails" != 0 ]; then
        out+="  first failures:
$( (failures_of "$phase" warm; failures_of "$phase" run) | head -24 | sed 's/^/    /')
  distinct error lines (count):
$( (failures_of "$phase" warm; failures_of "$phase" run) | grep -v '^phase ' |
            sed -E -e 's/^ +//' -e 's#/tmp/dt-soak\.[A-Za-z0-9]+/c/[0-9]+#ROOT#g' -e 's/^(Err|Ign):[0-9]+/\1:N/' |
            sort | uniq -c | sort -rn | head -8 | sed 's/^/    /')
"
    fi
    if [ -n "${PHASE_SLOW[$phase]:-}" ]; then
        out+="  slow heads             ${PHASE_SLOW[$phase]}
"
    fi
    local worst_rss=0 worst_fds=0
    for name in ${PHASE_DAEMONS[$phase]}; do
        out+="  daemon $name (${DHTTP[$name]}, peers ${DPEERADDR[$name]:-n/a}): ${PHASE_COUNTERS[$phase.$name]}
                          cold     start       end  end/start       min       max
"
        local m c s e lo hi r v
        for m in "RSS MB:rss_kb:mb" "open fds:fds:n" "threads:threads:n" "peer conns:peer_connections:n" \
            "apt conns (ss):apt_connections:n" "SQLite db+wal KB:db:kb" "  state.db KB:state_db_bytes:kb" \
            "  state.db-wal KB:state_wal_bytes:kb"; do
            IFS=: read -r lbl colname kind <<<"$m"
            if [ "$colname" = db ]; then
                c=$(awk -F, -v p="$phase" -v d="$name" '$3 == p && $5 == d && $4 == "cold" {print $12 + $13}' "$CSV" | tail -1)
                s=$(awk -F, -v p="$phase" -v d="$name" '$3 == p && $5 == d && $4 == "start" {print $12 + $13}' "$CSV" | tail -1)
                e=$(awk -F, -v p="$phase" -v d="$name" '$3 == p && $5 == d && $4 == "end" {print $12 + $13}' "$CSV" | tail -1)
                read -r lo hi < <(awk -F, -v p="$phase" -v d="$name" '$3 == p && $5 == d && $4 != "cold" {print $12 + $13}' "$CSV" | minmax)
            else
                c=$(awk -F, -v p="$phase" -v d="$name" -v c="$colname" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next } $3 == p && $5 == d && $4 == "cold" {print $k}' "$CSV" | tail -1)
                s=$(col_of "$phase" "$name" "$colname" start | tail -1)
                e=$(col_of "$phase" "$name" "$colname" end | tail -1)
                read -r lo hi < <(col_of "$phase" "$name" "$colname" | grep -v n/a | minmax)
            fi
            r=$(ratio "$e" "$s")
            v=
            case $colname in
            rss_kb) v=$(verdict "$r"); worst_rss=$(awk -v a="$worst_rss" -v b="$r" 'BEGIN { print (b != "n/a" && b+0 > a+0) ? b : a }') ;;
            fds) v=$(verdict "$r"); worst_fds=$(awk -v a="$worst_fds" -v b="$r" 'BEGIN { print (b != "n/a" && b+0 > a+0) ? b : a }') ;;
            esac
            case $kind in
            mb) c=$(fmt_mb "$c"); s=$(fmt_mb "$s"); e=$(fmt_mb "$e"); lo=$(fmt_mb "$lo"); hi=$(fmt_mb "$hi") ;;
            kb) c=$(fmt_kb "$c"); s=$(fmt_kb "$s"); e=$(fmt_kb "$e"); lo=$(fmt_kb "$lo"); hi=$(fmt_kb "$hi") ;;
            esac
            case $colname in rss_kb | fds | db | state_db_bytes | state_wal_bytes) ;; *) r= ;; esac
            out+=$(printf '    %-18s %9s %9s %9s %10s %9s %9s  %s' "$lbl" "${c:-n/a}" "${s:-n/a}" "${e:-n/a}" "$r" "$lo" "$hi" "$v")
            out+=$'\n'
        done
        out+="    RSS MB over time     $(col_of "$phase" "$name" rss_kb | awk '{printf "%s%.1f", (NR > 1 ? " " : ""), $1/1024}')
    fds over time        $(col_of "$phase" "$name" fds | tr '\n' ' ')
"
        f=$(grep -cvE '^\s*$' "$WORK/d/$name/stderr" || true)
        if [ "$f" != 0 ]; then
            out+="    daemon log: $f lines at warn or above; most frequent:
$(sed -E -e 's/^[^ ]+ +//' -e 's/[0-9]+(\.[0-9]+)?(ms|s|µs)?/N/g' "$WORK/d/$name/stderr" | cut -c1-150 | sort | uniq -c | sort -rn | head -4 | sed 's/^/      /')
"
        fi
    done
    REPORT[$phase]=$out
    SUMMARY[$phase]=$(printf '%-6s %8s %8s %7s %7s %8s %12s %12s' "$phase" "$(wc -w <<<"${PHASE_DAEMONS[$phase]}")" "$CLIENTS" "$runs" "$fails" "$wfails" "$worst_rss" "$worst_fds")
}

# ------------------------------------------------------------------ phases
declare -A PHASE_DAEMONS PHASE_MIRROR PHASE_SLOW PHASE_COUNTERS PHASE_LOAD
for i in $(seq 1 "$CLIENTS"); do mk_client "$i"; done

# run_phase PHASE: start the daemons, cold sample, WARMUP s of rounds (the
# daemons reach their working size: caches, allocator arenas, the store
# filled), SETTLE s idle, start sample,
# DURATION s of rounds (sampled every SAMPLE_SECS), end sample, stop.
run_phase() {
    local phase=$1 name i n slow_pid= end label
    DNAMES=()
    if [ "$phase" = A ]; then
        start_daemon A1 127.0.0.11 none
        label="$CLIENTS clients through one daemon, ${DURATION} s"
        [ "$SLOWLORIS" = 0 ] || label+=", $SLOWLORIS slow request heads against it (slowloris.py)"
    else
        start_daemon B1 127.0.0.21 none
        [ -n "${DPEERADDR[B1]}" ] || { echo "soak: B1 shows no .swarm.peer_addr in status.json" >&2; exit 1; }
        for i in $(seq 2 "$SWARM"); do
            start_daemon "B$i" "127.0.0.$((20 + i))" "${DPEERADDR[B1]}"
        done
        label="$CLIENTS clients spread over $SWARM daemons (private DHT from B1), ${DURATION} s"
    fi
    PHASE_DAEMONS[$phase]="${DNAMES[*]}"
    n=${#DNAMES[@]}
    for i in $(seq 1 "$CLIENTS"); do point_client "$i" "${DNAMES[$(((i - 1) % n))]}"; done
    log "phase $phase: $label; daemons: $(for name in "${DNAMES[@]}"; do printf '%s=%s ' "$name" "${DHTTP[$name]}"; done)"
    for name in "${DNAMES[@]}"; do sample "$phase" cold "$name" >/dev/null; done
    log "phase $phase: warm-up, $WARMUP s of rounds"
    clients "$phase" warm "$((EPOCHSECONDS + WARMUP))"
    sleep "$SETTLE"
    for name in "${DNAMES[@]}"; do sample "$phase" start "$name" >/dev/null; done
    mirror_reset
    PHASE_LOAD[$phase.start]=$(cut -d' ' -f1-3 /proc/loadavg)
    rm -f "$WORK/stop.$phase"
    sampler "$phase" "$WORK/stop.$phase" &
    local sampler_pid=$!
    PIDS+=("$sampler_pid")
    if [ "$phase" = A ] && [ "$SLOWLORIS" -gt 0 ]; then
        "$PY" "$HERE/slowloris.py" 127.0.0.11 "${DHTTP[A1]##*:}" "$SLOWLORIS" "$DURATION" \
            "/$MIRROR/debian/dists/stable/InRelease" "$WORK/slowloris.json" 2>"$WORK/slowloris.err" &
        slow_pid=$!
        PIDS+=("$slow_pid")
    fi
    end=$((EPOCHSECONDS + DURATION))
    log "phase $phase: $DURATION s of rounds (until $(date -d "@$end" +%T))"
    clients "$phase" run "$end"
    log "phase $phase: clients done ($((EPOCHSECONDS - end)) s after the deadline)"
    touch "$WORK/stop.$phase"
    wait "$sampler_pid" 2>/dev/null || true
    unpid "$sampler_pid"
    if [ -n "$slow_pid" ]; then
        for i in $(seq 1 150); do kill -0 "$slow_pid" 2>/dev/null || break; sleep 0.1; done
        kill "$slow_pid" 2>/dev/null || true
        wait "$slow_pid" 2>/dev/null || true
        unpid "$slow_pid"
        if [ -s "$WORK/slowloris.json" ]; then
            PHASE_SLOW[$phase]=$(jq -r '"\(.n) wanted: open on average \(.open_avg) (min \(.open_min), max \(.open_max), \(.open_at_end) at the end); \(.connects) connects, \(.connect_failures) connect failures, \(.server_closes) closed by the daemon (kept \(.closed_lifetime_avg_s // "n/a") s on average, max \(.closed_lifetime_max_s // "n/a") s; oldest still open at the end \(.oldest_open_at_end_s) s); \(.header_lines_sent) header lines sent; daemon answers: \(if (.responses | length) == 0 then "none" else (.responses | to_entries | map("\(.value)x \(.key)") | join(", ")) end)"' "$WORK/slowloris.json")
        else
            PHASE_SLOW[$phase]="slowloris.py wrote no result: $(head -c 300 "$WORK/slowloris.err")"
        fi
    fi
    PHASE_MIRROR[$phase]=$(mirror_stats)
    PHASE_LOAD[$phase.end]=$(cut -d' ' -f1-3 /proc/loadavg)
    sleep "$SETTLE"
    for name in "${DNAMES[@]}"; do
        sample "$phase" end "$name" >/dev/null
        PHASE_COUNTERS[$phase.$name]=$(status "$name" | jq -r '"\(.requests) requests, to apt \(.bytes_to_apt / 1e6 | floor) MB, from mirror \(.bytes_from_mirror / 1e6 | floor) MB, from peers \(.bytes_from_peers / 1e6 | floor) MB, uploaded \(.bytes_uploaded / 1e6 | floor) MB"' 2>/dev/null || echo "no status.json")
        kill -0 "${DPID[$name]}" 2>/dev/null || PHASE_COUNTERS[$phase.$name]+=" — THE DAEMON HAS EXITED"
    done
    phase_report "$phase" "$label"
    for name in "${DNAMES[@]}"; do stop_daemon "$name"; done
    log "phase $phase done"
}

for p in $PHASES; do run_phase "$p"; done

# ------------------------------------------------------------------ output
echo
echo "debtorrent soak — $(date -u +%FT%TZ), $(nproc) cores, all traffic on 127.0.0.0/8, total $((EPOCHSECONDS - T_START)) s"
echo "binary:   $BIN_INFO"
echo "settings: CLIENTS=$CLIENTS DURATION=$DURATION SLOWLORIS=$SLOWLORIS PHASES=\"$PHASES\" SWARM=$SWARM SAMPLE_SECS=$SAMPLE_SECS APT_TIMEOUT=$APT_TIMEOUT BIG_PCT=$BIG_PCT WARMUP=$WARMUP SETTLE=$SETTLE SEED=$SEED"
echo "mirror:   nginx on $MIRROR, the e2e fixture ($(( ${#SMALL_PKGS[@]} + HAVE_BIG )) packages: ${SMALL_PKGS[*]}$([ "$HAVE_BIG" = 1 ] && echo " + bigpkg 54.5 MB in ${BIG_PCT}% of rounds"))"
echo "a round:  apt-get update + apt-get install --download-only of a random subset (each package with chance 1/2), archives emptied after it"
echo "samples:  cold = fresh daemon; start = after $WARMUP s of warm-up rounds, then $SETTLE s idle; end = after the last round, then $SETTLE s idle; min/max over every sample from start to end (every $SAMPLE_SECS s)"
for p in $PHASES; do
    echo
    echo "${REPORT[$p]}"
done
echo
echo "summary (goal: 0 failed rounds; RSS and fds end/start <= 1.10)"
printf '%-6s %8s %8s %7s %7s %8s %12s %12s   %s\n' phase daemons clients rounds failed warm-up "RSS end/st" "fds end/st" "load average start -> end of the rounds"
for p in $PHASES; do
    echo "${SUMMARY[$p]}   ${PHASE_LOAD[$p.start]} -> ${PHASE_LOAD[$p.end]}"
done
echo "(RSS and fds columns: the worst daemon of the phase; warm-up: failed warm-up rounds)"
echo "load average: at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples: $CSV$([ -z "${KEEP:-}" ] && echo " (removed at exit; KEEP=1 keeps it)")"
