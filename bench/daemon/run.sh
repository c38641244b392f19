#!/usr/bin/env bash
# bench/daemon/run.sh — the debtorrent daemon against nginx (the limit) and
# apt-cacher-ng, side by side on 127.0.0.1, same files, one run:
#   (a) a cached >= 50 MB package to curl: median MB/s of $RUNS, ratio vs nginx
#   (b) a cached 53 KB package, wrk -c 32 -t 2 -d ${WRK_SECS}s: req/s, ratio vs nginx
#   (c) cold apt-get update + install --download-only of the whole set through
#       each, vs apt straight from the mirror (nginx): median seconds, ratio
#   (d) idle daemon RSS after the real bookworm main Packages is registered
#
# Usage: bench/daemon/run.sh            (builds target/release/debtorrent and
#                                        the e2e fixture, then measures)
# Env:   DEBTORRENT_BIN=path  use this binary instead of building
#        FIXTURE=dir          use an exported fixture (repo/, archive-keyring.gpg)
#        RUNS=5 WRK_SECS=10 APT_RUNS=5   KEEP=1 keeps the work folder
#        SETTLE=1 (seconds each cache gets after its start, before (c))
#        PERF_OUT=prefix (perf record of the daemon during (b): PERF_OUT-small.data)
# Traffic stays on 127.0.0.1; every loop is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-5}
WRK_SECS=${WRK_SECS:-10}
APT_RUNS=${APT_RUNS:-5}

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need nginx nginx-light
need apt-cacher-ng apt-cacher-ng
need wrk wrk
need curl curl
need apt-get apt
need lz4 lz4
need gpgv gpgv

WORK=$(mktemp -d /tmp/dt-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "bench: kept $WORK"; fi
}
trap cleanup EXIT
log() { echo "bench: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports stay below 32768: apt-cacher-ng 3.7 mangles upstream ports above it
# (seen with strace: a request for 127.0.0.1:38555 connects to port 62838).
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        port_open "$p" || { echo "$p"; return 0; }
    done
    return 1
}
wait_port() {
    local i
    for i in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done
    echo "bench: nothing listens on port $1 after 10 s" >&2
    return 1
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }

# ------------------------------------------------------------ binary, fixture
if [ -z "${DEBTORRENT_BIN:-}" ]; then
    log "building target/release/debtorrent"
    (cd "$TOP" && cargo build -q --release --bin debtorrent)
    DEBTORRENT_BIN="$TOP/target/release/debtorrent"
fi
if [ -z "${FIXTURE:-}" ]; then
    log "building the e2e fixture (signed repository)"
    FIXTURE="$WORK/fixture"
    (cd "$TOP" && DEBTORRENT_E2E_EXPORT="$FIXTURE" cargo test -q --test e2e -- \
        --ignored --exact baseline::export_fixture_for_bench >/dev/null)
fi
REPO="$FIXTURE/repo"
KEYRING="$FIXTURE/archive-keyring.gpg"
[ -f "$REPO/dists/stable/InRelease" ] || { echo "bench: no fixture at $FIXTURE" >&2; exit 1; }
BIG_PATH=$(awk '$1=="bigpkg" {print $4}' "$FIXTURE/pool-files.txt")
BIG_SIZE=$(awk '$1=="bigpkg" {print $2}' "$FIXTURE/pool-files.txt")
SMALL_PATH=$(awk '$1=="small" {print $4}' "$FIXTURE/pool-files.txt")
SMALL_SIZE=$(awk '$1=="small" {print $2}' "$FIXTURE/pool-files.txt")
PKGS=$(awk '$4 ~ /\.deb$/ {print $1}' "$FIXTURE/pool-files.txt" | tr '\n' ' ')
urlq() { sed -e 's/+/%2b/g' -e 's/~/%7e/g' <<<"$1"; }

# ------------------------------------------------------- bookworm index (d)
BW="$WORK/bookworm"
LISTS=/var/lib/apt/lists
BW_LZ4="$LISTS/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"
BW_INREL="$LISTS/deb.debian.org_debian_dists_bookworm_InRelease"
HAVE_BW=0
if [ -f "$BW_LZ4" ] && [ -f "$BW_INREL" ]; then
    mkdir -p "$BW/dists/bookworm/main/binary-amd64"
    cp "$BW_INREL" "$BW/dists/bookworm/InRelease"
    lz4 -dcq "$BW_LZ4" >"$BW/dists/bookworm/main/binary-amd64/Packages"
    HAVE_BW=1
fi

# ------------------------------------------------------------------- nginx
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 2048; }
http {
    access_log off;
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
        listen 127.0.0.1:$NGINX_PORT;
        location /debian/ { alias $REPO/; }
        location /bookworm/ { alias $BW/; }
    }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port "$NGINX_PORT"
MIRROR="127.0.0.1:$NGINX_PORT"
log "nginx on $MIRROR"

# ----------------------------------------------------------- apt-cacher-ng
ACNG_PORT=$(free_port)
ACNG_PID=
start_acng() {
    rm -rf "$WORK/acng/cache" "$WORK/acng/log"
    mkdir -p "$WORK/acng/conf" "$WORK/acng/cache" "$WORK/acng/log"
    cat >"$WORK/acng/conf/acng.conf" <<EOF
CacheDir: $WORK/acng/cache
LogDir: $WORK/acng/log
SupportDir: /usr/lib/apt-cacher-ng
Port: $ACNG_PORT
BindAddress: 127.0.0.1
AllowUserPorts: 80 443 $NGINX_PORT
ForeGround: 1
PidFile: $WORK/acng/pid
SocketPath: $WORK/acng/socket
ReportPage: acng-report.html
VerboseLog: 0
EOF
    apt-cacher-ng -c "$WORK/acng/conf" >"$WORK/acng/stdout" 2>&1 &
    ACNG_PID=$!
    PIDS+=("$ACNG_PID")
    wait_port "$ACNG_PORT"
}
stop_pid() {
    local p=$1 i
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

# --------------------------------------------------------------- debtorrent
DT_PORT=$(free_port)
DT_PID=
DT_RUN=0
start_dt() {
    # Each daemon's log is kept (dt-stderr.N) for KEEP=1 runs.
    if [ -f "$WORK/dt/stderr" ]; then cp "$WORK/dt/stderr" "$WORK/dt-stderr.$((++DT_RUN))"; fi
    rm -rf "$WORK/dt"
    mkdir -p "$WORK/dt/data"
    "$DEBTORRENT_BIN" serve --listen "127.0.0.1:$DT_PORT" --data-dir "$WORK/dt/data" \
        --allow-port "$NGINX_PORT" --log-level "${DT_LOG:-warn}" >"$WORK/dt/stdout" 2>"$WORK/dt/stderr" &
    DT_PID=$!
    PIDS+=("$DT_PID")
    wait_port "$DT_PORT"
}

# -------------------------------------------------------------- apt client
# mk_apt DIR SOURCE_URL PROXY  (PROXY: "DIRECT" or http://...)
mk_apt() {
    local r=$1 url=$2 proxy=$3
    rm -rf "$r"
    mkdir -p "$r"/etc/apt/{apt.conf.d,preferences.d,trusted.gpg.d} "$r"/var/lib/apt/lists/partial \
        "$r"/var/cache/apt/archives/partial "$r"/var/lib/dpkg "$r"/var/log/apt
    : >"$r/var/lib/dpkg/status"
    printf 'deb [signed-by=%s] %s stable main\n' "$KEYRING" "$url" >"$r/etc/apt/sources.list"
    cat >"$r/apt.conf" <<EOF
Dir "$r/";
Dir::State "$r/var/lib/apt";
Dir::State::status "$r/var/lib/dpkg/status";
Dir::Cache "$r/var/cache/apt";
Dir::Etc "$r/etc/apt";
Dir::Etc::Main "$r/etc/apt/apt.conf";
Dir::Etc::Parts "$r/etc/apt/apt.conf.d";
Dir::Etc::SourceList "$r/etc/apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Preferences "$r/etc/apt/preferences";
Dir::Etc::PreferencesParts "$r/etc/apt/preferences.d";
Dir::Etc::Trusted "$r/etc/apt/trusted.gpg";
Dir::Etc::TrustedParts "$r/etc/apt/trusted.gpg.d";
Dir::Log "$r/var/log/apt";
Debug::NoLocking "true";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
Acquire::Retries "0";
Acquire::PDiffs "false";
Acquire::http::Timeout "30";
Acquire::http::Proxy "$proxy";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
EOF
}
# apt_cold DIR -> prints seconds; fails loudly if apt fails
apt_cold() {
    local r=$1 t0 t1
    t0=$(now)
    if ! env -i PATH="$PATH" LANG=C APT_CONFIG="$r/apt.conf" timeout 300 \
        sh -c "apt-get -qq update && apt-get -qq -y install --download-only $PKGS" >"$r/apt.log" 2>&1; then
        echo "bench: apt failed in $r:" >&2
        cat "$r/apt.log" >&2
        return 1
    fi
    t1=$(now)
    local n
    n=$(find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | wc -l)
    [ "$n" -eq "$(wc -w <<<"$PKGS")" ] || { echo "bench: only $n debs in $r" >&2; return 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b-a }'
}

# ---------------------------------------------------------- (c) cold apt
log "(c) cold apt-get update + install --download-only ($APT_RUNS runs each)"
declare -A COLD
: >"$WORK/cold-direct"
: >"$WORK/cold-dt"
: >"$WORK/cold-acng"
for i in $(seq 1 "$APT_RUNS"); do
    mk_apt "$WORK/apt" "http://$MIRROR/debian" DIRECT
    apt_cold "$WORK/apt" >>"$WORK/cold-direct"

    # A cold cache, not a cold daemon: both caches start fresh and get a
    # second to settle, as a service does long before apt runs. (A
    # daemon asked within 0.5 s of its start waits up to that long once,
    # for its DHT to find a node, before it may conclude that no peer can
    # come; this run's first fetch took 0.4 s more for it.)
    stop_pid "$DT_PID"
    start_dt
    sleep "${SETTLE:-1}"
    mk_apt "$WORK/apt" "http://127.0.0.1:$DT_PORT/$MIRROR/debian" DIRECT
    apt_cold "$WORK/apt" >>"$WORK/cold-dt"

    stop_pid "$ACNG_PID"
    start_acng
    sleep "${SETTLE:-1}"
    mk_apt "$WORK/apt" "http://127.0.0.1:$ACNG_PORT/$MIRROR/debian" DIRECT
    apt_cold "$WORK/apt" >>"$WORK/cold-acng"
done
for k in direct dt acng; do COLD[$k]=$(median <"$WORK/cold-$k"); done
# Both caches are now warm with the whole set (the last cold run).

# -------------------------------------------------------------- (a) curl
URL_NGINX_BIG="http://$MIRROR/debian/$(urlq "$BIG_PATH")"
URL_DT_BIG="http://127.0.0.1:$DT_PORT/$MIRROR/debian/$(urlq "$BIG_PATH")"
URL_ACNG_BIG="http://127.0.0.1:$ACNG_PORT/$MIRROR/debian/$(urlq "$BIG_PATH")"
curl_mbps() {
    local url=$1 i out code size speed
    : >"$WORK/curl"
    for i in $(seq 0 "$RUNS"); do
        out=$(curl -s -o /dev/null --max-time 60 -w '%{http_code} %{size_download} %{speed_download}' "$url")
        read -r code size speed <<<"$out"
        if [ "$code" != 200 ] || [ "$size" != "$BIG_SIZE" ]; then
            echo "bench: $url gave HTTP $code, $size bytes (want $BIG_SIZE)" >&2
            echo nan
            return 0
        fi
        [ "$i" -eq 0 ] && continue # warm-up
        awk -v s="$speed" 'BEGIN { printf "%.1f\n", s/1e6 }' >>"$WORK/curl"
    done
    median <"$WORK/curl"
}
log "(a) cached $BIG_SIZE-byte package to curl (median of $RUNS)"
A_NGINX=$(curl_mbps "$URL_NGINX_BIG")
A_DT=$(curl_mbps "$URL_DT_BIG")
A_ACNG=$(curl_mbps "$URL_ACNG_BIG")

# --------------------------------------------------------------- (b) wrk
URL_NGINX_SMALL="http://$MIRROR/debian/$(urlq "$SMALL_PATH")"
URL_DT_SMALL="http://127.0.0.1:$DT_PORT/$MIRROR/debian/$(urlq "$SMALL_PATH")"
URL_ACNG_SMALL="http://127.0.0.1:$ACNG_PORT/$MIRROR/debian/$(urlq "$SMALL_PATH")"
wrk_rps() {
    local url=$1 out code
    code=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$url")
    [ "$code" = 200 ] || { echo "bench: $url gave HTTP $code" >&2; echo nan; return 0; }
    out=$(timeout $((WRK_SECS + 30)) wrk -c 32 -t 2 -d "${WRK_SECS}s" --timeout 10s "$url" 2>&1) || true
    echo "$out" >>"$WORK/wrk.log"
    if grep -q "Non-2xx" <<<"$out"; then echo "bench: errors from $url: $(grep Non-2xx <<<"$out")" >&2; fi
    awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}
log "(b) cached $SMALL_SIZE-byte package, wrk -c 32 -t 2 -d ${WRK_SECS}s"
B_NGINX=$(wrk_rps "$URL_NGINX_SMALL")
# PERF_OUT=prefix: profile the daemon during its wrk run (PERF_OUT-small.data).
perfpid=
if [ -n "${PERF_OUT:-}" ]; then
    perf record -q -F 999 -g -p "$DT_PID" -o "$PERF_OUT-small.data" >/dev/null 2>&1 &
    perfpid=$!
    sleep 0.3
fi
B_DT=$(wrk_rps "$URL_DT_SMALL")
if [ -n "$perfpid" ]; then kill -INT "$perfpid" 2>/dev/null; wait "$perfpid" 2>/dev/null || true; fi
B_ACNG=$(wrk_rps "$URL_ACNG_SMALL")

# ------------------------------------------------------------ (d) idle RSS
D_RSS="n/a"
D_NOTE=""
if [ "$HAVE_BW" = 1 ]; then
    log "(d) idle RSS with the bookworm main index registered"
    stop_pid "$DT_PID"
    start_dt
    base="http://127.0.0.1:$DT_PORT/$MIRROR/bookworm/dists/bookworm"
    curl -s -o /dev/null --max-time 30 "$base/InRelease"
    code=$(curl -s -o /dev/null --max-time 120 -w '%{http_code}' "$base/main/binary-amd64/Packages")
    # Give the daemon time to build and register the torrent (its
    # /status.json lists it with an info_hash), then let it idle.
    registered=no
    for i in $(seq 1 60); do
        st=$(curl -s --max-time 5 "http://127.0.0.1:$DT_PORT/status.json" || true)
        if grep -q '"info_hash"' <<<"$st"; then registered=yes; break; fi
        sleep 1
    done
    sleep 5
    D_RSS=$(awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$DT_PID/status" 2>/dev/null || echo n/a)
    if command -v jq >/dev/null 2>&1; then
        st=$(jq -c '{torrents: [.torrents[]? | {index_path, pieces, total_bytes}], cache_bytes, bytes_from_mirror}' <<<"$st" 2>/dev/null || echo "$st")
    fi
    D_NOTE="(Packages GET: HTTP $code; torrent registered: $registered; $(head -c 400 <<<"${st:-}"))"
else
    D_NOTE="(no $BW_LZ4 on this machine)"
fi

# ----------------------------------------------------------------- report
cat <<EOF

debtorrent daemon benchmark — $(date -u +%FT%TZ), $(nproc) cores, all on 127.0.0.1
binary: $DEBTORRENT_BIN

(a) cached $BIG_SIZE-byte package to curl, median of $RUNS (MB/s)
    nginx          $A_NGINX
    debtorrent     $A_DT   ratio vs nginx $(ratio "$A_DT" "$A_NGINX")   (target >= 1.0, issue 14)
    apt-cacher-ng  $A_ACNG   ratio vs nginx $(ratio "$A_ACNG" "$A_NGINX")

(b) cached $SMALL_SIZE-byte package, wrk -c 32 -t 2 -d ${WRK_SECS}s (requests/s)
    nginx          $B_NGINX
    debtorrent     $B_DT   ratio vs nginx $(ratio "$B_DT" "$B_NGINX")   (target >= 0.8, issue 14)
    apt-cacher-ng  $B_ACNG   ratio vs nginx $(ratio "$B_ACNG" "$B_NGINX")

(c) cold apt-get update + install --download-only of $(wc -w <<<"$PKGS") packages, median of $APT_RUNS (s)
    direct (nginx) ${COLD[direct]}
    debtorrent     ${COLD[dt]}   ratio vs direct $(ratio "${COLD[dt]}" "${COLD[direct]}")   (target <= 1.1)
    apt-cacher-ng  ${COLD[acng]}   ratio vs direct $(ratio "${COLD[acng]}" "${COLD[direct]}")   (target <= 1.2)

(d) idle daemon RSS with bookworm main registered: $D_RSS MB   (target <= 40)
    $D_NOTE
EOF
