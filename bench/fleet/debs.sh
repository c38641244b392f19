#!/usr/bin/env bash
# bench/fleet/debs.sh — the real .debs of the fleet benchmark, downloaded
# once with `apt-get download` from this machine's own apt sources (the
# Debian mirror) into a cache outside the repository, and reused.
#
# Usage: bench/fleet/debs.sh CACHE PKGS
#   CACHE  e.g. ~/.cache/debtorrent-bench/fleet (gets debs/, packages.list)
#   PKGS   how many packages (the large ones below always included)
# The list is the dependency closure (no recommends) of ROOTS in this
# machine's apt lists, sorted; the large packages plus the first
# PKGS - (number of large) others in a fixed hashed order. Written once to
# CACHE/packages.list and reused (delete it to choose again).
set -euo pipefail

CACHE=$1
PKGS=$2
ROOTS=${ROOTS:-git openjdk-17-jdk-headless rustc libstd-rust-dev build-essential python3 perl curl vim cmake rsync tmux htop jq wget openssh-client sudo zstd unzip zip gnupg less make ca-certificates python3-yaml python3-requests sqlite3 strace lsof file bc tree}
LARGE="openjdk-17-jdk-headless openjdk-17-jre-headless libstd-rust-dev git rustc"
mkdir -p "$CACHE/debs"
LIST="$CACHE/packages.list"
if [ ! -s "$LIST" ] || [ "$(wc -l <"$LIST")" != "$PKGS" ]; then
    # shellcheck disable=SC2086
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances $ROOTS 2>/dev/null | grep -E '^[a-z0-9]' | sort -u >"$CACHE/closure.txt"
    {
        for p in $LARGE; do echo "$p"; done
        grep -vxF -f <(tr ' ' '\n' <<<"$LARGE") "$CACHE/closure.txt" |
            while read -r p; do echo "$(printf '%s' "$p" | sha1sum | cut -c1-12) $p"; done |
            sort | cut -d' ' -f2 | head -n $((PKGS - $(wc -w <<<"$LARGE")))
    } >"$LIST.tmp"
    mv "$LIST.tmp" "$LIST"
fi
# Download what is missing (by package name; the version is whatever this
# machine's lists say, once).
missing=()
while read -r p; do
    compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done <"$LIST"
if [ "${#missing[@]}" -gt 0 ]; then
    echo "fleet: downloading ${#missing[@]} .debs into $CACHE/debs (apt-get download)" >&2
    (cd "$CACHE/debs" && timeout 1800 apt-get download -q "${missing[@]}" >"$CACHE/download.log" 2>&1) ||
        { echo "fleet: apt-get download failed: $(tail -n 3 "$CACHE/download.log")" >&2; exit 1; }
fi
n=0
while read -r p; do compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null && n=$((n + 1)); done <"$LIST"
echo "fleet: $n of $PKGS .debs in $CACHE/debs ($(du -sh "$CACHE/debs" | cut -f1))" >&2
