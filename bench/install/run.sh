#!/usr/bin/env bash
# bench/install/run.sh — a real download of about 300 real packages by a
# real apt, from 4 debtorrent peers that hold them, side by side with the
# same apt straight from nginx on loopback (issue 14: at most 1.2x).
# One command, bounded, all traffic on 127.0.3.0/24.
#
#   - Packages: PKGS (300) real bookworm .debs, downloaded once with
#     `apt-get download` and cached (bench/fleet/debs.sh, FLEET_CACHE), in a
#     repository signed with a throwaway gpg key (apt-ftparchive).
#   - nginx on 127.0.3.1: /full/ serves everything, /nopool/ the indexes
#     only (404 for pool/), so the leecher's package bytes can only come
#     from its peers.
#   - 4 seed daemons (127.0.3.11-14, one private DHT) each fetch every
#     package through themselves from /full/ (curl), so they hold and seed
#     the whole set.
#   - Each run: a fresh leecher daemon (127.0.3.20, fresh data folder,
#     bootstrapping from the seeds) behind a fresh apt root; `apt-get
#     update`, then `apt-get download` of all the packages (the set is a
#     sample of a dependency closure, not closed under Depends, so `install
#     --download-only` would refuse it; `download` runs the same acquire
#     code: pipelined HTTP, apt's own SHA256 check of every file). Timed:
#     the download alone. The same with a fresh apt root straight from
#     nginx /full/. Interleaved, RUNS (5) of each; medians and the ratio.
#   - Checks: every file arrived (count; apt checked the SHA256), and the
#     leecher's /status.json counts no byte from the mirror.
#
# Usage: bench/install/run.sh      (root: apt roots, 127.0.3.x addresses)
# Env:   RUNS=5 PKGS=300 FLEET_CACHE=~/.cache/debtorrent-bench/fleet
#        DEBTORRENT_BIN=path (default: cargo build --release)
#        BENCH_TMP=/tmp KEEP=1 (keep the work folder) LOG_LEVEL=info
#        PERF_OUT=prefix (perf record of the leecher, PERF_OUT-<run>.data)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib/apt-root.sh
. "$HERE/../lib/apt-root.sh"
# shellcheck source-path=SCRIPTDIR source=../lib/nginx.sh
. "$HERE/../lib/nginx.sh"
RUNS=${RUNS:-5}
PKGS=${PKGS:-300}
FLEET_CACHE=${FLEET_CACHE:-$HOME/.cache/debtorrent-bench/fleet}
LOG_LEVEL=${LOG_LEVEL:-info}
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need nginx nginx-light
need curl curl
need jq jq
need apt-ftparchive apt-utils
need gpg gnupg
need xz xz-utils

log() { echo "bench: [$(($(date +%s) - T_START))s] $*" >&2; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() {
    local i
    for i in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.1; done
    echo "bench: nothing listens on $1:$2" >&2
    return 1
}

WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/dt-install.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "bench: kept $WORK" >&2; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ binary
if [ -z "${DEBTORRENT_BIN:-}" ]; then
    log "building target/release/debtorrent"
    (cd "$TOP" && cargo build -q --release --locked --bin debtorrent)
    DEBTORRENT_BIN=$TOP/target/release/debtorrent
fi
BIN="$WORK/debtorrent"
cp "$DEBTORRENT_BIN" "$BIN"

# ---------------------------------------------------------------- packages
"$TOP/bench/fleet/debs.sh" "$FLEET_CACHE" "$PKGS"
REPO="$WORK/repo"
mkdir -p "$REPO/pool/main" "$REPO/dists/set/main/binary-amd64"
NAMES=()
while read -r p; do
    for f in "$FLEET_CACHE"/debs/"${p}"_*.deb; do
        [ -e "$f" ] || continue
        # Debian's pool names: no epoch (apt-get download keeps it as %3a).
        b=$(basename "$f" | sed 's/_[0-9]*%3a/_/')
        ln "$f" "$REPO/pool/main/$b" 2>/dev/null || cp "$f" "$REPO/pool/main/$b"
        NAMES+=("$p")
    done
done <"$FLEET_CACHE/packages.list"
(cd "$REPO" && apt-ftparchive packages pool/main >dists/set/main/binary-amd64/Packages 2>"$WORK/ftparchive.err")
xz -k -6 "$REPO/dists/set/main/binary-amd64/Packages"
SET_BYTES=$(du -cb "$REPO"/pool/main/*.deb | tail -n 1 | cut -f1)
NFILES=$(find "$REPO/pool/main" -name '*.deb' | wc -l)
export GNUPGHOME="$WORK/gnupg"
mkdir -p "$GNUPGHOME"
chmod 700 "$GNUPGHOME"
UID_STR="debtorrent install bench key <install@example.invalid>"
gpg -q --batch --yes --passphrase '' --quick-gen-key "$UID_STR" ed25519 sign never 2>"$WORK/gpg.log"
(cd "$REPO/dists/set" && apt-ftparchive -o APT::FTPArchive::Release::Origin=installbench \
    -o APT::FTPArchive::Release::Suite=set -o APT::FTPArchive::Release::Codename=set \
    -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
    release . >"$WORK/Release" 2>>"$WORK/ftparchive.err")
mv "$WORK/Release" "$REPO/dists/set/Release"
gpg -q --batch --yes --local-user "$UID_STR" --clearsign -o "$REPO/dists/set/InRelease" "$REPO/dists/set/Release" 2>>"$WORK/gpg.log"
KEYRING="$WORK/keyring.gpg"
gpg -q --batch --yes --export --output "$KEYRING" 2>>"$WORK/gpg.log"
gpgconf --kill all 2>/dev/null || true
unset GNUPGHOME
[ -s "$KEYRING" ] || { echo "bench: gpg made no keyring" >&2; exit 1; }
log "repository: $NFILES packages, $SET_BYTES bytes"

# ------------------------------------------------------------------- nginx
NGINX=127.0.3.1:8080
nginx_conf "$WORK/nginx" "
        listen $NGINX;
        location /full/ { alias $REPO/; }
        location /nopool/dists/ { alias $REPO/dists/; }
        location /nopool/pool/ { return 404; }"
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_port 127.0.3.1 8080

# ----------------------------------------------------------------- daemons
declare -A DPID
# start_daemon NAME IP ARGS...: HTTP on IP:9988, peers and DHT on IP:6881.
start_daemon() {
    local name=$1 ip=$2
    shift 2
    rm -rf "$WORK/d/$name"
    mkdir -p "$WORK/d/$name/data"
    local data="$WORK/d/$name/data"
    # LEECH_DATA=DIR puts the leechers' data folders there (a tmpfs shows
    # what the disk's fsync costs apt).
    case "$name" in leech*) if [ -n "${LEECH_DATA:-}" ]; then data=$(mktemp -d "$LEECH_DATA/dt-leech.XXXXXX"); fi ;; esac
    "$BIN" serve --listen "$ip:9988" --data-dir "$data" --peer-addr "$ip:6881" \
        --no-lsd --allow-port 8080 --log-level "$LOG_LEVEL" "$@" \
        >"$WORK/d/$name/stdout" 2>"$WORK/d/$name/stderr" &
    DPID[$name]=$!
    PIDS+=("$!")
    wait_port "$ip" 9988
}
stop_daemon() {
    local p=${DPID[$1]:-} i
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

log "4 seeds take the set from nginx"
start_daemon s1 127.0.3.11 --dht-bootstrap none
for k in 2 3 4; do start_daemon "s$k" "127.0.3.1$k" --dht-bootstrap 127.0.3.11:6881; done
for k in 1 2 3 4; do
    base="http://127.0.3.1$k:9988/$NGINX/full"
    curl -sf -o /dev/null --max-time 60 "$base/dists/set/InRelease"
    curl -sf -o /dev/null --max-time 60 "$base/dists/set/main/binary-amd64/Packages.xz"
done
sleep 1
# Each seed fetches every file through itself (8 at a time).
for k in 1 2 3 4; do
    (cd "$REPO" && find pool/main -name '*.deb' -printf '%P\n') |
        xargs -P 8 -I{} curl -sf -o /dev/null --max-time 300 "http://127.0.3.1$k:9988/$NGINX/full/pool/main/{}" ||
        { echo "bench: seed s$k could not fetch the set" >&2; exit 1; }
done
for k in 1 2 3 4; do
    held=$(curl -sf --max-time 10 "http://127.0.3.1$k:9988/status.json" | jq '.cache_bytes // 0')
    log "seed s$k holds $held bytes"
done

# --------------------------------------------------------------------- runs
# run_apt ROOT URL: a fresh apt root on URL; update, then download every
# package (timed); prints "seconds files".
run_apt() {
    local r=$1 url=$2 t0 t1 n
    rm -rf "$r"
    apt_root "$r"
    printf 'deb [signed-by=%s] %s set main\n' "$KEYRING" "$url" >"$r/etc/apt/sources.list"
    APT_CONFIG="$r/apt.conf" timeout 300 apt-get -q update >"$r/update.log" 2>&1 ||
        { echo "bench: apt-get update failed: $(tail -n 3 "$r/update.log")" >&2; echo "nan 0"; return 0; }
    mkdir -p "$r/dl"
    t0=$(date +%s.%N)
    # apt's own CPU (the http method's hashing is most of it): bash's
    # `time` adds up the user and system time of apt and its children.
    { TIMEFORMAT='%U %S'; time (cd "$r/dl" && APT_CONFIG="$r/apt.conf" timeout 600 apt-get -q download "${NAMES[@]}" >"$r/download.log" 2>&1); } 2>"$r/cpu" ||
        echo "bench: apt-get download failed: $(tail -n 3 "$r/download.log")" >&2
    t1=$(date +%s.%N)
    n=$(find "$r/dl" -name '*.deb' | wc -l)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b-a }') $n $(awk '{ printf "%.2f", $1 + $2 }' "$r/cpu")"
}
# cpu_of NAME...: user+system seconds the named daemons have spent so far.
cpu_of() {
    local n t=0
    for n in "$@"; do
        t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", t + ($12 + $13) / hz }' "/proc/${DPID[$n]}/stat")
    done
    echo "$t"
}
: >"$WORK/t-nginx"
: >"$WORK/t-dt"
: >"$WORK/t-held"
CHECKS=""
CPU=""
APT_CPU_NGINX=""
APT_CPU_DT=""
SEED_CPU=""
for i in $(seq 1 "$RUNS"); do
    read -r t n ac < <(run_apt "$WORK/apt-nginx" "http://$NGINX/full")
    [ "$n" = "$NFILES" ] || CHECKS+="run $i nginx: $n of $NFILES files; "
    echo "$t" >>"$WORK/t-nginx"
    APT_CPU_NGINX+="${ac}s "

    L="leech$i"
    start_daemon "$L" 127.0.3.20 --dht-bootstrap 127.0.3.11:6881,127.0.3.12:6881
    c0=$(cpu_of "$L")
    s0=$(cpu_of s1 s2 s3 s4)
    # PERF_OUT=prefix: profile the leecher during the run (perf record).
    perfpid=
    if [ -n "${PERF_OUT:-}" ]; then
        perf record -q -F 999 -g -p "${DPID[$L]}" -o "$PERF_OUT-$i.data" >/dev/null 2>&1 &
        perfpid=$!
        sleep 0.3
    fi
    read -r t n ac < <(run_apt "$WORK/apt-dt" "http://127.0.3.20:9988/$NGINX/nopool")
    if [ -n "$perfpid" ]; then kill -INT "$perfpid" 2>/dev/null; wait "$perfpid" 2>/dev/null || true; fi
    c1=$(cpu_of "$L")
    s1=$(cpu_of s1 s2 s3 s4)
    APT_CPU_DT+="${ac}s "
    SEED_CPU+="$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b-a }')s "
    st=$(curl -sf --max-time 10 http://127.0.3.20:9988/status.json || echo '{}')
    from_mirror=$(jq '.bytes_from_mirror // 0' <<<"$st")
    from_peers=$(jq '.bytes_from_peers // 0' <<<"$st")
    [ "$n" = "$NFILES" ] || CHECKS+="run $i debtorrent: $n of $NFILES files; "
    CHECKS+="run $i: from peers $from_peers, from the mirror $from_mirror (indexes; pool/ is 404 there); "
    CPU+="$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b-a }')s "
    echo "$t" >>"$WORK/t-dt"
    # The same leecher again, now that it holds every file, behind a fresh
    # apt root: what serving from the store costs, without the swarm.
    read -r th nh _ < <(run_apt "$WORK/apt-held" "http://127.0.3.20:9988/$NGINX/nopool")
    [ "$nh" = "$NFILES" ] || CHECKS+="run $i held: $nh of $NFILES files; "
    echo "$th" >>"$WORK/t-held"
    stop_daemon "$L"
    rm -rf "$WORK/d/$L/data"
    log "run $i: nginx $(tail -n 1 "$WORK/t-nginx") s, debtorrent $t s, held $th s"
done
M_NGINX=$(median <"$WORK/t-nginx")
M_DT=$(median <"$WORK/t-dt")
M_HELD=$(median <"$WORK/t-held")
cat <<EOF
debtorrent install benchmark — $(date -u +%FT%TZ), $(nproc) cores, load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)
binary: $DEBTORRENT_BIN; all traffic on 127.0.3.0/24; total $(($(date +%s) - T_START)) s
apt-get download of $NFILES real packages ($SET_BYTES bytes), fresh apt root each run, median of $RUNS (s)
    straight from nginx          $M_NGINX   runs: $(tr '\n' ' ' <"$WORK/t-nginx")
    debtorrent, from 4 peers     $M_DT   runs: $(tr '\n' ' ' <"$WORK/t-dt")
    ratio debtorrent / nginx     $(awk -v a="$M_DT" -v b="$M_NGINX" 'BEGIN { if (b+0 == 0) print "n/a"; else printf "%.2f", a/b }')   (goal <= 1.2)
    debtorrent, held in store    $M_HELD   runs: $(tr '\n' ' ' <"$WORK/t-held")  (the same leecher again: no swarm)
    leecher CPU per run          $CPU
    seeds' CPU per run (all 4)   $SEED_CPU
    apt CPU per run, nginx / dt  $APT_CPU_NGINX/ $APT_CPU_DT
    checks                       $CHECKS
EOF
