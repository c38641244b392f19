#!/usr/bin/env python3
"""Interleaved timing for bench/gen/run.sh (see there)."""
import os
import resource
import statistics
import subprocess
import sys
import time

index, gen, lookups = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
RUNS, PY_RUNS = 21, 3


def timed(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    return time.perf_counter() - t, out, before


def peak_rss_mib(cmd):
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so measure
    # each command in a fresh Python child.
    code = ("import resource,subprocess,sys;"
            "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return int(out) / 1024


size = os.path.getsize(index)
ours_cmd = [gen, "hash", index]
sha_cmd = ["sha1sum", index]
py_cmd = [sys.executable, os.path.join(here, "baseline.py"), index]

# Warm the page cache and check that both implementations agree.
_, ours_out, _ = timed(ours_cmd)
_, py_out, _ = timed(py_cmd)
if ours_out.strip() != py_out.strip():
    sys.exit(f"MISMATCH: debtorrent-gen {ours_out!r} vs Python {py_out!r}")

ours, sha = [], []
for _ in range(RUNS):
    sha.append(timed(sha_cmd)[0])
    ours.append(timed(ours_cmd)[0])
py = [timed(py_cmd)[0] for _ in range(PY_RUNS)]

m_ours, m_sha, m_py = (statistics.median(x) for x in (ours, sha, py))
build_s, lookup_s, pieces, heap = subprocess.run(
    [lookups, index], check=True, stdout=subprocess.PIPE, text=True).stdout.split()

print(f"index: {index} ({size / 1e6:.1f} MB uncompressed, {pieces} pieces), info hash {ours_out.decode().strip()}")
print(f"{'command':<28}{'median':>10}{'runs':>6}")
print(f"{'sha1sum':<28}{m_sha:>9.3f}s{RUNS:>6}")
print(f"{'debtorrent-gen hash':<28}{m_ours:>9.3f}s{RUNS:>6}")
print(f"{'python baseline':<28}{m_py:>9.3f}s{PY_RUNS:>6}")
print(f"ratio debtorrent-gen / sha1sum:        {m_ours / m_sha:.2f}  (goal <= 1.1)")
print(f"ratio python baseline / debtorrent-gen: {m_py / m_ours:.1f}x")
print(f"peak RSS debtorrent-gen hash:          {peak_rss_mib(ours_cmd):.1f} MiB  (goal <= 40)")
print(f"in-process build of the torrent:       {float(build_s):.3f}s")
print(f"1,000,000 path -> piece lookups:       {float(lookup_s):.3f}s  (goal < 0.2)")
print(f"torrent heap held:                     {int(heap) / 2**20:.1f} MiB for {pieces} pieces")
