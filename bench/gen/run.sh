#!/usr/bin/env bash
# debtorrent-gen benchmark: `bench/gen/run.sh [INDEX]`.
# Times `debtorrent-gen hash` on the real bookworm main Packages index side
# by side with `sha1sum` (the floor: reading and hashing the same bytes) and
# with the straightforward Python implementation in bench/gen/baseline.py,
# in interleaved runs; prints medians, ratios, peak RSS, and the in-process
# build and one-million-lookup times.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:-$(ls /var/lib/apt/lists/*_dists_bookworm_main_binary-amd64_Packages* 2>/dev/null | head -n1 || true)}
if [ -z "$src" ] || [ ! -e "$src" ]; then
  echo "no index given and no bookworm main Packages in /var/lib/apt/lists (run apt-get update)" >&2
  exit 1
fi
cargo build --release -q -p debtorrent-gen --bin debtorrent-gen --example lookups
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
case "$src" in
  *.lz4) lz4 -dc "$src" >"$work/Packages" ;;
  *.xz) xz -dc "$src" >"$work/Packages" ;;
  *.gz) gzip -dc "$src" >"$work/Packages" ;;
  *.zst) zstd -qdc "$src" >"$work/Packages" ;;
  *) cp "$src" "$work/Packages" ;;
esac
exec python3 bench/gen/measure.py "$work/Packages" target/release/debtorrent-gen target/release/examples/lookups
