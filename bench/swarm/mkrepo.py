#!/usr/bin/python3
"""Builds the unsigned test archive for bench/swarm/run.sh.

    mkrepo.py DIR BIG_BYTES SET_COUNT SET_MIN SET_MAX SEED [NCOMP]

Suites, each with its own Packages (so its own torrent):
  dists/big: big_1_amd64.deb (BIG_BYTES random bytes) and warm_1_amd64.deb
             (1 MB, fetched first so the leecher is connected before the
             timed request);
  dists/set: SET_COUNT packages of SET_MIN..SET_MAX random bytes;
  dists/setv2: the next version of set's index (scenario 5): one package
             added and one upgraded (a new file), every other file the
             same, as after a security update;
  dists/set-updates: a second suite listing half of set's files byte for
             byte (its own index; codename set-updates, so the same dt2
             swarm as set);
  dists/dht: NCOMP (default 16) components c01, c02, ..., each with a
             Packages listing one 1000-byte package: NCOMP dt2 swarms
             (scenario 5's DHT load).
The daemon does not parse .debs, so the "packages" are random bytes.
Writes DIR/<suite>.files: "name size sha256 path" per package, sorted by
path (dt1's piece order; dt2 peers match files by SHA-256).
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


def suite(root, name, pkgs, codename=None, components=None):
    """pkgs: [(pkgname, size, sha, path)] -> Packages + Release of suite
    `name`, component main; or components: {component: pkgs}, one
    Packages each (pkgs is then ignored)."""
    codename = codename or name
    components = components or {"main": pkgs}
    sums = []
    for comp, cpkgs in components.items():
        paras = []
        for pkg, size, sha, path in cpkgs:
            paras.append(
                f"Package: {pkg}\nVersion: 1\nArchitecture: amd64\n"
                f"Maintainer: bench <bench@localhost>\nDescription: swarm benchmark payload\n"
                f"Filename: {path}\nSize: {size}\nSHA256: {sha}\n"
            )
        text = "\n".join(paras).encode()
        d = os.path.join(root, "dists", name, comp, "binary-amd64")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "Packages"), "wb") as f:
            f.write(text)
        sums.append(f" {hashlib.sha256(text).hexdigest()} {len(text)} {comp}/binary-amd64/Packages\n")
    rel = (
        f"Origin: bench\nLabel: bench\nSuite: {name}\nCodename: {codename}\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: amd64\n"
        f"Components: {' '.join(components)}\nSHA256:\n" + "".join(sums)
    )
    with open(os.path.join(root, "dists", name, "Release"), "w") as f:
        f.write(rel)
    allpkgs = [p for cpkgs in components.values() for p in cpkgs]
    with open(os.path.join(root, name + ".files"), "w") as f:
        for pkg, size, sha, path in sorted(allpkgs, key=lambda p: p[3].encode()):
            f.write(f"{pkg} {size} {sha} {path}\n")


def main():
    root, big, count, lo, hi, seed = sys.argv[1:7]
    ncomp = int(sys.argv[7]) if len(sys.argv) > 7 else 16
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
    # The next index version: set's files, one upgraded, one added.
    v2 = list(pk)
    up_name, up_size, _, _ = v2[0]
    up_path = f"pool/main/s/{up_name}/{up_name}_2_amd64.deb"
    v2[0] = (up_name, up_size, write_random(os.path.join(root, up_path), up_size, rng), up_path)
    new_size = rng.randint(lo, hi)
    new_path = "pool/main/n/newpkg/newpkg_1_amd64.deb"
    v2.append(("newpkg", new_size, write_random(os.path.join(root, new_path), new_size, rng), new_path))
    suite(root, "setv2", v2, codename="set")
    # A second suite of the same family listing half of set's files byte
    # for byte (as -updates does after a point release): another index,
    # the same files.
    suite(root, "set-updates", pk[::2], codename="set-updates")
    # Scenario 5's DHT load: one suite with NCOMP components c01, c02, ...,
    # each a Packages of one 1000-byte package, so NCOMP dt2 swarms.
    comps = {}
    for c in range(1, ncomp + 1):
        pkg = f"dht{c:02d}"
        path = f"pool/c{c:02d}/d/{pkg}/{pkg}_1_amd64.deb"
        comps[f"c{c:02d}"] = [(pkg, 1000, write_random(os.path.join(root, path), 1000, rng), path)]
    if comps:
        suite(root, "dht", [], components=comps)


if __name__ == "__main__":
    main()
