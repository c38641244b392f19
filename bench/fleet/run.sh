#!/usr/bin/env bash
# bench/fleet/run.sh — a fleet of N real daemons on one machine, each with
# its own real apt client, arriving in waves against a WAN-like mirror
# (issue 12, item 1). One command, bounded; all traffic on 127.0.0.0/8.
#
#   - N daemons (default 100) on 127.0.1.1 .. 127.0.1.N (apt front end on
#     :9988, peers and DHT on :6881), one private DHT (daemon 1 starts it
#     with --dht-bootstrap none; every other bootstraps from daemon 1 and
#     one daemon started before it), no tracker (TRACKER=1 adds the
#     workspace's debtorrent-tracker), no LSD. Each daemon starts
#     DAEMON_LEAD s before its client, as a machine that boots and runs its
#     job at once.
#   - Each client: a private apt root (bench/lib/apt-root.sh), `apt-get
#     update`, then `apt-get download` of its wants (no dependency
#     resolution: exactly the wanted files), checked (count and sizes; apt
#     checks the SHA256), then deleted.
#   - Packages: PKGS (300) real bookworm .debs (apt-get download from this
#     machine's sources, cached in FLEET_CACHE), in a repository signed
#     with a throwaway gpg key (apt-ftparchive). Wants: a seeded Zipf-like
#     popularity ranking, the large packages at fixed top ranks.
#   - Arrival: WAVES waves WAVE_GAP s apart, offsets spread over JITTER s
#     inside a wave; the waves of SIM_WAVES start all at the same instant.
#     Halfway through, the index is updated (CHANGED packages at a new
#     version, ADDED new ones, re-signed); later clients see it.
#   - Mirror: wanmirror.py on 127.0.2.1:8080, one MIRROR_RATE (20 MB/s)
#     token bucket for everything it sends, RTT_MS (30) before each
#     response; it logs bytes per request.
#   - Baseline: the same clients, wants and schedule straight from a fresh
#     mirror of the same rate (no daemon).
# Report (table on stdout, JSON in REPORT_JSON): mirror bytes / unique
# bytes wanted, share of package bytes from peers, files the mirror sent
# more than once, apt download time p50/p95/max vs the baseline, DHT
# packets and bytes per node per second (nft counters on the DHT ports),
# connections per daemon, peak RSS and CPU per daemon, failed apt runs,
# load average.
#
# Usage: bench/fleet/run.sh            (root: nft counters, apt roots)
# Env:   N=100 WAVES=5 WAVE_GAP=30 JITTER=10 SIM_WAVES="1 4" DAEMON_LEAD=3
#        PKGS=300 CHANGED=4 ADDED=3 ZIPF_A=1.2 ZIPF_S=1.0 ZIPF_MAX=0.95 SEED=1
#        MIRROR_RATE=20000000 (bytes/s) RTT_MS=30 APT_TIMEOUT=600 TAIL=30
#        SAMPLE_SECS=10 BASELINE=1 (0: no baseline) FLEET=1 (0: baseline only)
#        TRACKER=0 LOG_LEVEL=info
#        DHT_SNIFF=1 (break the DHT traffic down by message: dhtsniff.py)
#        DAEMON_ARGS="..." (extra flags for every daemon)
#        DEBTORRENT=path (default <repo>/target/release/debtorrent, built
#        with cargo build --release --locked when absent)
#        FLEET_CACHE=~/.cache/debtorrent-bench/fleet  BENCH_TMP=/tmp
#        REPORT_JSON=path (default fleet-report-<time>.json in BENCH_TMP)
#        KEEP=1 keeps the work folder (logs, status snapshots, mirror logs)
# Every wait and loop is bounded; every process started here is stopped at
# exit, and the nft table is deleted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib/apt-root.sh
. "$HERE/../lib/apt-root.sh"
N=${N:-100}
WAVES=${WAVES:-5}
WAVE_GAP=${WAVE_GAP:-30}
JITTER=${JITTER:-10}
SIM_WAVES=${SIM_WAVES-1 4}
DAEMON_LEAD=${DAEMON_LEAD:-3}
PKGS=${PKGS:-300}
CHANGED=${CHANGED:-4}
ADDED=${ADDED:-3}
ZIPF_A=${ZIPF_A:-1.2}
ZIPF_S=${ZIPF_S:-1.0}
ZIPF_MAX=${ZIPF_MAX:-0.95}
SEED=${SEED:-1}
MIRROR_RATE=${MIRROR_RATE:-20000000}
RTT_MS=${RTT_MS:-30}
APT_TIMEOUT=${APT_TIMEOUT:-600}
TAIL=${TAIL:-30}
SAMPLE_SECS=${SAMPLE_SECS:-10}
BASELINE=${BASELINE:-1}
FLEET=${FLEET:-1}
TRACKER=${TRACKER:-0}
DHT_SNIFF=${DHT_SNIFF:-0}
LOG_LEVEL=${LOG_LEVEL:-info}
DAEMON_ARGS=${DAEMON_ARGS:-}
FLEET_CACHE=${FLEET_CACHE:-$HOME/.cache/debtorrent-bench/fleet}
BENCH_TMP=${BENCH_TMP:-/tmp}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

for v in N WAVES WAVE_GAP JITTER DAEMON_LEAD PKGS CHANGED ADDED SEED MIRROR_RATE RTT_MS APT_TIMEOUT TAIL SAMPLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "fleet: $v=${!v} is not a whole number" >&2; exit 1; }
done
if [ "$N" -lt 2 ] || [ "$N" -gt 250 ]; then echo "fleet: N must be 2..250 (127.0.1.1 .. 127.0.1.250)" >&2; exit 1; fi
if [ "$WAVES" -lt 1 ] || [ "$WAVES" -gt "$N" ]; then echo "fleet: WAVES must be 1..N" >&2; exit 1; fi
[ "$JITTER" -lt "$WAVE_GAP" ] || [ "$WAVES" = 1 ] || { echo "fleet: JITTER must be below WAVE_GAP" >&2; exit 1; }
if [ "$SAMPLE_SECS" -lt 1 ] || [ "$MIRROR_RATE" -lt 100000 ]; then echo "fleet: SAMPLE_SECS >= 1, MIRROR_RATE >= 100000" >&2; exit 1; fi
[ "$(id -u)" = 0 ] || { echo "fleet: needs root (nft counters on the DHT ports)" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "fleet: missing $1 (apt-get install $2)" >&2; exit 1; }; }
need apt-get apt
need apt-ftparchive apt-utils
need dpkg-deb dpkg
need gpg gnupg
need gpgconf gnupg
need curl curl
need jq jq
need nft nftables
need xz xz-utils
need timeout coreutils
[ -n "$PY" ] || { echo "fleet: missing python3" >&2; exit 1; }

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$BENCH_TMP"
WORK=$(mktemp -d "$BENCH_TMP/dt-fleet.XXXXXX")
chmod 755 "$WORK"
REPORT_JSON=${REPORT_JSON:-$BENCH_TMP/fleet-report-$(date -u +%Y%m%dT%H%M%SZ).json}
NFT_TABLE="dtfleet$$"
NFT_ON=0
PIDS=()                # mirror, tracker, sampler
declare -A DPID CPID   # daemons, client subshells, by k
GNUPGHOME_USED=
MIRROR_IP=127.0.2.1
MIRROR_PORT=8080
TRACKER_ADDR=127.0.2.2:6969
dip() { echo "127.0.1.$1"; }

cleanup() {
    local p alive
    set +e
    : >"$WORK/stop"
    for p in "${CPID[@]}"; do [ -n "$p" ] && kill -- "-$p" 2>/dev/null; done
    for p in "${CPID[@]}" "${DPID[@]}" "${PIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    for _ in $(seq 1 100); do
        alive=0
        for p in "${CPID[@]}" "${DPID[@]}" "${PIDS[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && { alive=1; break; }; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${CPID[@]}" "${DPID[@]}" "${PIDS[@]}"; do [ -n "$p" ] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
    [ "$NFT_ON" = 1 ] && nft delete table inet "$NFT_TABLE" 2>/dev/null
    if [ -n "$GNUPGHOME_USED" ]; then GNUPGHOME="$GNUPGHOME_USED" gpgconf --kill all 2>/dev/null; fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "fleet: kept $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "fleet: [$((EPOCHSECONDS - T_START))s] $*" >&2; }
NOTES=()
note() { NOTES+=("$*"); log "NOTE: $*"; echo "$*" >>"$WORK/notes"; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ------------------------------------------------------------ binary
DEBTORRENT=${DEBTORRENT:-$TOP/target/release/debtorrent}
if [ "$FLEET" = 1 ] && [ ! -x "$DEBTORRENT" ]; then
    log "building $DEBTORRENT (cargo build --release --locked)"
    (cd "$TOP" && nice -n 10 cargo build -q --release --locked --bin debtorrent) ||
        { echo "fleet: cargo build failed" >&2; exit 1; }
fi
BIN="$WORK/debtorrent"
BIN_INFO="none (FLEET=0)"
if [ "$FLEET" = 1 ]; then
    [ -x "$DEBTORRENT" ] || { echo "fleet: $DEBTORRENT is not an executable" >&2; exit 1; }
    # A private copy: a rebuild during the run changes nothing.
    cp "$DEBTORRENT" "$BIN"
    BIN_INFO="$DEBTORRENT (sha256 $(sha256sum "$BIN" | cut -c1-12), built $(date -u -r "$DEBTORRENT" +%FT%TZ))"
fi
TRACKER_BIN=
if [ "$TRACKER" = 1 ]; then
    TRACKER_BIN=${DEBTORRENT_TRACKER:-$(dirname "$DEBTORRENT")/debtorrent-tracker}
    if [ ! -x "$TRACKER_BIN" ]; then
        log "building debtorrent-tracker"
        (cd "$TOP" && nice -n 10 cargo build -q --release --locked -p debtorrent-tracker --bin debtorrent-tracker) ||
            { echo "fleet: cargo build of the tracker failed" >&2; exit 1; }
        TRACKER_BIN=$TOP/target/release/debtorrent-tracker
    fi
fi

# ------------------------------------------------------------ packages
"$HERE/debs.sh" "$FLEET_CACHE" "$PKGS"
REPO="$WORK/repo"
POOL="$REPO/pool/main"
mkdir -p "$POOL" "$REPO/v1/fleet/main/binary-amd64" "$REPO/v2/fleet/main/binary-amd64" "$REPO/dists" "$WORK/plan"
while read -r p; do
    # Debian's pool names: no epoch (apt-get download keeps it as %3a).
    for f in "$FLEET_CACHE"/debs/"${p}"_*.deb; do
        [ -e "$f" ] || continue
        b=$(basename "$f" | sed 's/_[0-9]*%3a/_/')
        ln "$f" "$POOL/$b" 2>/dev/null || cp "$f" "$POOL/$b"
    done
done <"$FLEET_CACHE/packages.list"
(cd "$REPO" && apt-ftparchive packages pool/main >"$WORK/plan/orig.Packages" 2>"$WORK/ftparchive.err")
# The changed packages: the same package at version VERSION+fleet1,
# rebuilt with dpkg-deb from the original (cached).
mkdir -p "$FLEET_CACHE/rebuilt"
mapfile -t CHANGED_NAMES < <("$PY" "$HERE/plan.py" changed "$WORK/plan/orig.Packages" "$SEED" "$CHANGED")
for p in "${CHANGED_NAMES[@]}"; do
    src=$(compgen -G "$POOL/${p}_*.deb" | head -n 1)
    ver=$(dpkg-deb -f "$src" Version)
    arch=$(dpkg-deb -f "$src" Architecture)
    out="$FLEET_CACHE/rebuilt/${p}_${ver#*:}+fleet1_${arch}.deb"
    if [ ! -s "$out" ]; then
        log "rebuilding $p $ver as $ver+fleet1 (cached in $FLEET_CACHE/rebuilt)"
        rm -rf "$WORK/rebuild"
        dpkg-deb -R "$src" "$WORK/rebuild"
        sed -i "s/^Version: .*/Version: $ver+fleet1/" "$WORK/rebuild/DEBIAN/control"
        timeout 600 dpkg-deb --root-owner-group -Zxz -b "$WORK/rebuild" "$out.tmp" >/dev/null
        mv "$out.tmp" "$out"
        rm -rf "$WORK/rebuild"
    fi
    ln "$out" "$POOL/" 2>/dev/null || cp "$out" "$POOL/"
done
(cd "$REPO" && apt-ftparchive packages pool/main >"$WORK/plan/all.Packages" 2>>"$WORK/ftparchive.err")
"$PY" "$HERE/plan.py" make "$WORK/plan/all.Packages" "$WORK/plan" "$SEED" "$N" "$CHANGED" "$ADDED" \
    "$WAVES" "$WAVE_GAP" "$JITTER" "$SIM_WAVES" "$ZIPF_A" "$ZIPF_S" "$ZIPF_MAX"

# Both index versions, signed with a throwaway key. The mirror serves
# dists/fleet, a symlink switched from v1 to v2 at the update.
export GNUPGHOME="$WORK/gnupg"
mkdir -p "$GNUPGHOME"
chmod 700 "$GNUPGHOME"
GNUPGHOME_USED=$GNUPGHOME
UID_STR="debtorrent fleet bench key <fleet@example.invalid>"
gpg -q --batch --yes --passphrase '' --quick-gen-key "$UID_STR" ed25519 sign never 2>"$WORK/gpg.log"
for v in v1 v2; do
    d="$REPO/$v/fleet"
    cp "$WORK/plan/$v.Packages" "$d/main/binary-amd64/Packages"
    xz -k -6 "$d/main/binary-amd64/Packages"
    (cd "$d" && apt-ftparchive -o APT::FTPArchive::Release::Origin=fleet -o APT::FTPArchive::Release::Label=fleet \
        -o APT::FTPArchive::Release::Suite=fleet -o APT::FTPArchive::Release::Codename=fleet \
        -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
        release . >"$WORK/Release.$v" 2>>"$WORK/ftparchive.err")
    mv "$WORK/Release.$v" "$d/Release"
    gpg -q --batch --yes --local-user "$UID_STR" --clearsign -o "$d/InRelease" "$d/Release" 2>>"$WORK/gpg.log"
    [ "$v" = v1 ] && sleep 1 # v2's Date is later
done
KEYRING="$WORK/fleet-keyring.gpg"
gpg -q --batch --yes --export --output "$KEYRING" 2>>"$WORK/gpg.log"
gpgconf --kill all 2>/dev/null || true
GNUPGHOME_USED=
unset GNUPGHOME
[ -s "$KEYRING" ] || { echo "fleet: gpg made no keyring ($(head -c 300 "$WORK/gpg.log"))" >&2; exit 1; }
index_version() { # v1|v2: what the mirror serves as dists/fleet
    ln -sfn "../$1/fleet" "$REPO/dists/fleet.new"
    mv -T "$REPO/dists/fleet.new" "$REPO/dists/fleet"
}
UPDATE_AT=$(jq -r '.update_at // empty' "$WORK/plan/plan.json")
log "plan: $(jq -c '{n, per_wave, update_at, unique_files_wanted, unique_bytes_wanted, bytes_wanted_total, wants_total, changed, added}' "$WORK/plan/plan.json")"

# ------------------------------------------------------------ mirror
MIRROR_PID=
start_mirror() { # LOG
    : >"$1"
    "$PY" "$HERE/wanmirror.py" "$REPO" "$MIRROR_IP" "$MIRROR_PORT" "$MIRROR_RATE" "$RTT_MS" "$1" >"$1.err" 2>&1 &
    MIRROR_PID=$!
    PIDS+=("$MIRROR_PID")
    for _ in $(seq 1 100); do port_open "$MIRROR_IP" "$MIRROR_PORT" && return 0; sleep 0.1; done
    echo "fleet: the mirror did not start: $(head -c 300 "$1.err")" >&2
    exit 1
}
stop_pid() { # PID: SIGTERM, 10 s, SIGKILL
    local p=$1
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

# ------------------------------------------------------------ clients
# client PHASE K WAVE OFFSET VERSION WANTS APTURL: one apt client, run in
# the background at its arrival. Writes one line to PHASE/results:
#   k wave offset version update_rc update_s download_rc download_s wanted good_debs
# and its apt output to PHASE/c/K/.
client() {
    local phase=$1 k=$2 wave=$3 off=$4 ver=$5 wants=$6 url=$7
    local r="$WORK/$phase/c/$k" t0 t1 t2 urc=0 drc=0 w name size path names=() good=0 nw=0
    set +e
    apt_root "$r"
    printf 'deb [signed-by=%s] %s fleet main\n' "$KEYRING" "$url" >"$r/etc/apt/sources.list"
    mkdir -p "$r/dl"
    if [ "$phase" = fleet ]; then # the daemon started DAEMON_LEAD s ago: wait for it (20 s at most)
        for _ in $(seq 1 200); do port_open "$(dip "$k")" 9988 && break; sleep 0.1; done
    fi
    IFS=, read -r -a ws <<<"$wants"
    for w in "${ws[@]}"; do names+=("${w%%=*}"); done
    t0=$EPOCHREALTIME
    (cd "$r/dl" && env -i PATH="$PATH" LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive APT_CONFIG="$r/apt.conf" \
        timeout "$APT_TIMEOUT" apt-get -q -y update >"$r/update.out" 2>&1 </dev/null)
    urc=$?
    grep -qE '^(E:|W:|Err:)' "$r/update.out" && [ "$urc" = 0 ] && urc=E
    t1=$EPOCHREALTIME
    if [ "$urc" = 0 ]; then
        (cd "$r/dl" && env -i PATH="$PATH" LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive APT_CONFIG="$r/apt.conf" \
            timeout "$APT_TIMEOUT" apt-get -q -y download "${names[@]}" >"$r/download.out" 2>&1 </dev/null)
        drc=$?
        grep -qE '^(E:|W:|Err:)' "$r/download.out" && [ "$drc" = 0 ] && drc=E
    else
        drc=skip
    fi
    t2=$EPOCHREALTIME
    # Each wanted package: one .deb of its name and the index's size (apt
    # has checked its SHA256).
    for w in "${ws[@]}"; do
        nw=$((nw + 1))
        name=${w%%=*}
        size=${w#*=}
        size=${size%%=*}
        path=$(compgen -G "$r/dl/${name}_*.deb" | head -n 1)
        if [ -n "$path" ] && [ "$(stat -c %s "$path")" = "$size" ]; then
            good=$((good + 1))
        else
            echo "$name: want $size bytes, got ${path:+$(stat -c %s "$path")}${path:-nothing}" >>"$r/bad"
        fi
    done
    rm -f "$r"/dl/*.deb
    if [ "$urc" != 0 ] || [ "$drc" != 0 ] || [ "$good" != "$nw" ]; then
        {
            echo "$phase client $k (wave $wave, $ver): update $urc, download $drc, $good of $nw .debs"
            grep -hE '^(E:|W:|Err:)' "$r/update.out" "$r/download.out" 2>/dev/null | head -n 4 | sed 's/^/    /'
            head -n 3 "$r/bad" 2>/dev/null | sed 's/^/    /'
        } >>"$WORK/$phase/failures"
    fi
    echo "$k $wave $off $ver $urc $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') $drc $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.2f", b-a}') $nw $good" >>"$WORK/$phase/results"
}

# ------------------------------------------------------------ daemons
start_daemon() { # K BOOT(k,k,...)
    local k=$1 boot="" b d="$WORK/fleet/d/$1" extra=()
    if [ "$k" = 1 ]; then
        boot=none
    else
        for b in ${2//,/ }; do boot+="${boot:+,}$(dip "$b"):6881"; done
    fi
    [ "$TRACKER" = 1 ] && extra+=(--tracker "http://$TRACKER_ADDR/announce")
    mkdir -p "$d/data"
    # shellcheck disable=SC2086
    "$BIN" serve --listen "$(dip "$k"):9988" --data-dir "$d/data" --peer-addr "$(dip "$k"):6881" \
        --dht-bootstrap "$boot" --no-lsd --allow-port "$MIRROR_PORT" --log-level "$LOG_LEVEL" \
        "${extra[@]}" $DAEMON_ARGS >"$d/log" 2>&1 </dev/null &
    DPID[$k]=$!
    echo "$k ${DPID[$k]} $(dip "$k") 9988 $EPOCHREALTIME" >>"$WORK/fleet/daemons.list"
}

nft_setup() {
    local k
    {
        echo "table inet $NFT_TABLE {"
        echo "  chain out {"
        echo "    type filter hook output priority 0; policy accept;"
        for k in $(seq 1 "$N"); do echo "    ip saddr $(dip "$k") udp sport 6881 counter comment \"s $k\""; done
        echo "  }"
        echo "  chain in {"
        echo "    type filter hook input priority 0; policy accept;"
        for k in $(seq 1 "$N"); do echo "    ip daddr $(dip "$k") udp dport 6881 counter comment \"r $k\""; done
        echo "  }"
        echo "}"
    } >"$WORK/nft.rules"
    nft -f "$WORK/nft.rules" 2>"$WORK/nft.err" || { echo "fleet: nft refused the counters: $(head -c 300 "$WORK/nft.err")" >&2; exit 1; }
    NFT_ON=1
}
# nft_snap FILE: "dir k packets bytes" per counter, then "t <epoch>".
nft_snap() {
    nft -j list table inet "$NFT_TABLE" |
        jq -r '.nftables[] | select(.rule) | .rule | "\(.comment) \(.expr[] | select(.counter) | .counter | "\(.packets) \(.bytes)")"' >"$1.tmp"
    echo "t $EPOCHREALTIME" >>"$1.tmp"
    mv "$1.tmp" "$1"
}

# ------------------------------------------------------------ one phase
# run_phase fleet|baseline: the schedule of plan/clients.tsv from now:
# (fleet) daemon k at its offset, its client DAEMON_LEAD s later;
# (baseline) the client at offset + DAEMON_LEAD, straight to the mirror.
# The index switches to v2 at UPDATE_AT + DAEMON_LEAD.
run_phase() {
    local phase=$1 ev t k wave off ver boot wants dt p alive limit
    mkdir -p "$WORK/$phase/c" "$WORK/$phase/d"
    : >"$WORK/$phase/results"
    index_version v1
    start_mirror "$WORK/$phase/mirror.log"
    # Events, in time order: "t kind k" (kind: d daemon, c client, u update).
    {
        while IFS=$'\t' read -r k wave off ver boot wants; do
            [ "$phase" = fleet ] && echo "$off d $k"
            awk -v o="$off" -v l="$DAEMON_LEAD" -v k="$k" 'BEGIN { printf "%.2f c %s\n", o + l, k }'
        done <"$WORK/plan/clients.tsv"
        [ -n "$UPDATE_AT" ] && awk -v o="$UPDATE_AT" -v l="$DAEMON_LEAD" 'BEGIN { printf "%.2f u 0\n", o + l }'
    } | sort -g -k1,1 -k2,2 >"$WORK/$phase/events"
    declare -A ROW
    while IFS=$'\t' read -r k wave off ver boot wants; do ROW[$k]="$wave	$off	$ver	$boot	$wants"; done <"$WORK/plan/clients.tsv"
    if [ "$phase" = fleet ]; then
        : >"$WORK/fleet/daemons.list"
        # Daemon 1 first, up before the clock starts (the others bootstrap from it).
        start_daemon 1 ""
        for _ in $(seq 1 200); do port_open "$(dip 1)" 9988 && break; sleep 0.1; done
        port_open "$(dip 1)" 9988 || { echo "fleet: daemon 1 did not start: $(tail -n 5 "$WORK/fleet/d/1/log")" >&2; exit 1; }
        : >"$WORK/stop-sampler"
        rm -f "$WORK/stop-sampler"
        "$PY" "$HERE/sampler.py" "$WORK/fleet" "$SAMPLE_SECS" "$((WAVES * WAVE_GAP + APT_TIMEOUT + TAIL + 600))" "$WORK/stop-sampler" \
            >"$WORK/fleet/sampler.err" 2>&1 &
        SAMPLER_PID=$!
        PIDS+=("$SAMPLER_PID")
    fi
    local T0=$EPOCHREALTIME
    echo "$T0" >"$WORK/$phase/t0"
    log "$phase: $(wc -l <"$WORK/$phase/events") events over $(tail -n 1 "$WORK/$phase/events" | cut -d' ' -f1) s"
    while read -r t ev k; do
        dt=$(awk -v t="$t" -v t0="$T0" -v now="$EPOCHREALTIME" 'BEGIN { d = t0 + t - now; printf "%.3f", (d > 0 ? d : 0) }')
        [ "$dt" = 0.000 ] || sleep "$dt"
        case $ev in
        d)
            [ "$k" = 1 ] && continue
            IFS=$'\t' read -r wave off ver boot wants <<<"${ROW[$k]}"
            start_daemon "$k" "$boot"
            ;;
        c)
            IFS=$'\t' read -r wave off ver boot wants <<<"${ROW[$k]}"
            local url="http://$MIRROR_IP:$MIRROR_PORT/debian"
            [ "$phase" = fleet ] && url="http://$(dip "$k"):9988/$MIRROR_IP:$MIRROR_PORT/debian"
            set -m
            client "$phase" "$k" "$wave" "$off" "$ver" "$wants" "$url" </dev/null &
            CPID[$k]=$!
            set +m
            ;;
        u)
            index_version v2
            log "$phase: index updated to v2 (re-signed InRelease, $CHANGED changed, $ADDED added)"
            echo "$EPOCHREALTIME" >"$WORK/$phase/t_update"
            ;;
        esac
    done <"$WORK/$phase/events"
    log "$phase: all clients started; waiting for them (at most $((2 * APT_TIMEOUT + 30)) s)"
    limit=$((EPOCHSECONDS + 2 * APT_TIMEOUT + 30))
    while [ "$EPOCHSECONDS" -lt "$limit" ]; do
        alive=0
        for p in "${CPID[@]}"; do kill -0 "$p" 2>/dev/null && { alive=1; break; }; done
        [ "$alive" = 0 ] && break
        sleep 0.5
    done
    for k in "${!CPID[@]}"; do
        p=${CPID[$k]}
        if kill -0 "$p" 2>/dev/null; then
            note "$phase: client $k still running at the limit; killed"
            kill -- "-$p" 2>/dev/null || true
        fi
        wait "$p" 2>/dev/null || true
        CPID[$k]=
    done
    echo "$EPOCHREALTIME" >"$WORK/$phase/t_done"
    log "$phase: clients done ($(wc -l <"$WORK/$phase/results") results)"
}

# ============================================================ the run
LOAD_FLEET_START="" LOAD_FLEET_END=""
if [ "$FLEET" = 1 ]; then
    if [ "$TRACKER" = 1 ]; then
        mkdir -p "$WORK/tracker"
        "$TRACKER_BIN" --http-listen "$TRACKER_ADDR" --udp-listen "$TRACKER_ADDR" --data-dir "$WORK/tracker" --log warn \
            >"$WORK/tracker/log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 100); do port_open "${TRACKER_ADDR%:*}" "${TRACKER_ADDR#*:}" && break; sleep 0.1; done
        port_open "${TRACKER_ADDR%:*}" "${TRACKER_ADDR#*:}" || { echo "fleet: the tracker did not start: $(tail -n 3 "$WORK/tracker/log")" >&2; exit 1; }
    fi
    nft_setup
    SNIFF_PID=""
    if [ "$DHT_SNIFF" = 1 ]; then
        "$PY" "$HERE/dhtsniff.py" 6881 "$WORK/stop-sniff" "$WORK/fleet/dht-kinds.json" \
            "$((WAVES * WAVE_GAP + APT_TIMEOUT + 600))" 2>"$WORK/sniff.err" &
        SNIFF_PID=$!
        PIDS+=("$SNIFF_PID")
    fi
    LOAD_FLEET_START=$(cut -d' ' -f1-3 /proc/loadavg)
    log "fleet: $N daemons on 127.0.1.1..$N, mirror $MIRROR_RATE B/s, RTT $RTT_MS ms"
    run_phase fleet
    nft_snap "$WORK/fleet/nft.done"
    if [ -n "$SNIFF_PID" ]; then
        : >"$WORK/stop-sniff"
        for _ in $(seq 1 50); do kill -0 "$SNIFF_PID" 2>/dev/null || break; sleep 0.1; done
        stop_pid "$SNIFF_PID"
    fi
    log "fleet: $TAIL s idle tail (DHT upkeep)"
    sleep "$TAIL"
    nft_snap "$WORK/fleet/nft.tail"
    : >"$WORK/stop-sampler"
    for _ in $(seq 1 $((SAMPLE_SECS * 10 + 600))); do kill -0 "$SAMPLER_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$SAMPLER_PID"
    LOAD_FLEET_END=$(cut -d' ' -f1-3 /proc/loadavg)
    log "fleet: stopping $N daemons"
    for k in "${!DPID[@]}"; do kill "${DPID[$k]}" 2>/dev/null || true; done
    for _ in $(seq 1 300); do
        alive=0
        for k in "${!DPID[@]}"; do kill -0 "${DPID[$k]}" 2>/dev/null && { alive=1; break; }; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for k in "${!DPID[@]}"; do
        kill -0 "${DPID[$k]}" 2>/dev/null && note "daemon $k still running 30 s after SIGTERM; killed"
        kill -9 "${DPID[$k]}" 2>/dev/null || true
        wait "${DPID[$k]}" 2>/dev/null || true
    done
    DPID=()
    stop_pid "$MIRROR_PID"
    # The daemons' stores are not needed any more (disk).
    rm -rf "$WORK"/fleet/d/*/data/store 2>/dev/null || true
fi

if [ "$BASELINE" = 1 ]; then
    log "baseline: the same clients straight from the mirror"
    run_phase baseline
    stop_pid "$MIRROR_PID"
fi

# ------------------------------------------------------------ report
cat >"$WORK/meta.json" <<EOF
{"binary": $(jq -Rn --arg s "$BIN_INFO" '$s'), "n": $N, "waves": $WAVES, "wave_gap": $WAVE_GAP, "jitter": $JITTER,
 "sim_waves": $(jq -Rn --arg s "$SIM_WAVES" '$s'), "daemon_lead": $DAEMON_LEAD, "pkgs": $PKGS, "changed": $CHANGED, "added": $ADDED,
 "zipf_a": $ZIPF_A, "zipf_s": $ZIPF_S, "zipf_max": $ZIPF_MAX, "seed": $SEED, "mirror_rate": $MIRROR_RATE, "rtt_ms": $RTT_MS,
 "apt_timeout": $APT_TIMEOUT, "tail": $TAIL, "tracker": $TRACKER, "baseline": $BASELINE, "fleet": $FLEET,
 "daemon_args": $(jq -Rn --arg s "$DAEMON_ARGS" '$s'), "log_level": $(jq -Rn --arg s "$LOG_LEVEL" '$s'),
 "load_start": "$LOAD_START", "load_fleet_start": "$LOAD_FLEET_START", "load_fleet_end": "$LOAD_FLEET_END",
 "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "total_seconds": $((EPOCHSECONDS - T_START)),
 "nproc": $(nproc), "date": "$(date -u +%FT%TZ)"}
EOF
"$PY" "$HERE/report.py" "$WORK" "$REPORT_JSON"
echo "JSON: $REPORT_JSON"
