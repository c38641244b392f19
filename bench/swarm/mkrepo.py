#!/usr/bin/python3
"""Builds the unsigned test archive for bench/swarm/run.sh.

    mkrepo.py DIR BIG_BYTES SET_COUNT SET_MIN SET_MAX SEED

Two suites, each with its own Packages (so its own torrent):
  dists/big: big_1_amd64.deb (BIG_BYTES random bytes) and warm_1_amd64.deb
             (1 MB, fetched first so the leecher is connected before the
             timed request);
  dists/set: SET_COUNT packages of SET_MIN..SET_MAX random bytes.
The daemon does not parse .debs, so the "packages" are random bytes.
Writes DIR/<suite>.files: "name size sha256 path" per package, in torrent
(path-sorted) order, which is the piece order.
"""
import hashlib
import os
import random
import subprocess
import sys


def write_random(path, size, rng):
    """size pseudo-random bytes (AES-CTR keystream from openssl: fast, and
    nothing compresses or deduplicates it); returns the SHA-256."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = "%032x" % rng.getrandbits(128)
    p = subprocess.Popen(
        ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", key, "-iv", "0" * 32, "-in", "/dev/zero"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = p.stdout.read(min(4 << 20, left))
            if not b:
                raise SystemExit("mkrepo: openssl enc ended early")
            h.update(b)
            f.write(b)
            left -= len(b)
    p.kill()
    p.wait()
    return h.hexdigest()


def suite(root, name, pkgs):
    """pkgs: [(pkgname, size, sha, path)] -> Packages + Release of suite `name`."""
    paras = []
    for pkg, size, sha, path in pkgs:
        paras.append(
            f"Package: {pkg}\nVersion: 1\nArchitecture: amd64\n"
            f"Maintainer: bench <bench@localhost>\nDescription: swarm benchmark payload\n"
            f"Filename: {path}\nSize: {size}\nSHA256: {sha}\n"
        )
    text = "\n".join(paras).encode()
    d = os.path.join(root, "dists", name, "main", "binary-amd64")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "Packages"), "wb") as f:
        f.write(text)
    rel = (
        f"Origin: bench\nLabel: bench\nSuite: {name}\nCodename: {name}\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\n"
        f"SHA256:\n {hashlib.sha256(text).hexdigest()} {len(text)} main/binary-amd64/Packages\n"
    )
    with open(os.path.join(root, "dists", name, "Release"), "w") as f:
        f.write(rel)
    with open(os.path.join(root, name + ".files"), "w") as f:
        for pkg, size, sha, path in sorted(pkgs, key=lambda p: p[3].encode()):
            f.write(f"{pkg} {size} {sha} {path}\n")


def main():
    root, big, count, lo, hi, seed = sys.argv[1:7]
    big, count, lo, hi = int(big), int(count), int(lo), int(hi)
    rng = random.Random(int(seed))
    pk = []
    for pkg, size in (("big", big), ("warm", 1_000_000)):
        path = f"pool/main/{pkg[0]}/{pkg}/{pkg}_1_amd64.deb"
        pk.append((pkg, size, write_random(os.path.join(root, path), size, rng), path))
    suite(root, "big", pk)
    pk = []
    for i in range(count):
        pkg = f"set{i:02d}"
        size = rng.randint(lo, hi)
        path = f"pool/main/s/{pkg}/{pkg}_1_amd64.deb"
        pk.append((pkg, size, write_random(os.path.join(root, path), size, rng), path))
    suite(root, "set", pk)


if __name__ == "__main__":
    main()
