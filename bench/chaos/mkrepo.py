#!/usr/bin/python3
"""The (unsigned) archive of bench/chaos/run.sh; run.sh signs its Release.

    mkrepo.py DIR SMALL_N SMALL_MIN SMALL_MAX LARGE_N LARGE_MIN LARGE_MAX SEED

One suite, dists/chaos, component main: SMALL_N packages small00.. of
SMALL_MIN..SMALL_MAX random bytes and LARGE_N packages large00.. of
LARGE_MIN..LARGE_MAX bytes (apt's --download-only does not open a .deb,
so the "packages" are random bytes; the daemon does not parse them
either). Uses bench/swarm/mkrepo.py's writer (AES-CTR keystream: nothing
compresses or deduplicates it) and its Packages/Release layout. Writes
DIR/chaos.files: "name size sha256 path" per package.
"""
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "swarm"))
import mkrepo  # noqa: E402  (bench/swarm/mkrepo.py)


def main():
    root = sys.argv[1]
    small_n, small_min, small_max, large_n, large_min, large_max, seed = map(int, sys.argv[2:9])
    rng = random.Random(seed)
    pk = []
    for kind, n, lo, hi in (("small", small_n, small_min, small_max), ("large", large_n, large_min, large_max)):
        for i in range(n):
            pkg = f"{kind}{i:02d}"
            size = rng.randint(lo, hi)
            path = f"pool/main/{pkg[0]}/{pkg}/{pkg}_1_amd64.deb"
            pk.append((pkg, size, mkrepo.write_random(os.path.join(root, path), size, rng), path))
    mkrepo.suite(root, "chaos", pk)


if __name__ == "__main__":
    main()
