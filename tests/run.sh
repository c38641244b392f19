#!/usr/bin/env bash
# Every test, from a fresh Debian bookworm machine with Rust (README):
# installs the Debian packages the tests drive (with sudo when not root),
# then runs the workspace tests and the package test.
#
#   bash tests/run.sh            # install, then test
#   NO_INSTALL=1 bash tests/run.sh   # packages already there
#
# .ci/run calls this same script after its fmt and clippy checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts the tests drive:
# - apt, apt-utils (apt-ftparchive), gnupg, dpkg-dev, compressors: signed
#   test repositories and apt clients (tests/e2e);
# - aria2, python3-libtorrent, opentracker, nginx-light, openssl: the
#   tracker's and the swarm's interop peers, the HTTPS mirror;
# - curl, iproute2, util-linux (nsenter): LSD in a network namespace;
# - miniupnpd, nftables: the home router (UPnP port mapping, NAT) in
#   network namespaces (tests/e2e/upnp.rs);
# - chromium: the status page, rendered headless (tests/e2e/page.rs);
# - debhelper, lintian, systemd: tests/package.sh;
# - debootstrap, systemd-container: the units booted under systemd as
#   PID 1 (tests/systemd-boot.sh).
PACKAGES=(
    apt apt-utils gnupg dpkg-dev xz-utils bzip2 lz4 zstd gzip
    aria2 python3 python3-libtorrent opentracker nginx-light openssl ca-certificates
    curl iproute2 util-linux miniupnpd nftables
    chromium fonts-dejavu-core
    debhelper lintian systemd debootstrap systemd-container
)

if [ "${NO_INSTALL:-0}" != 1 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "tests/run.sh: installing ${missing[*]}"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

cargo test --workspace --locked
bash tests/package.sh
