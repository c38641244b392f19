#!/usr/bin/python3
"""Checks one stopped daemon's data folder against the archive, for
bench/chaos/run.sh.

    verify.py DATA_DIR REPO_DIR

Hashes every file under DATA_DIR/store/ and compares it with what the
archive says it is:
  - a pool file (store/pool/...): the SHA256 and Size of its Filename in
    the archive's Packages (REPO_DIR/chaos.files);
  - content named by its hash (.../by-hash/SHA256/<hex>): its SHA-256 must
    be <hex>, and <hex> a file the archive's Release lists;
  - anything else: its SHA-256 must be that of some file the archive lists
    (else it is "unknown").
Then the state database (a copy of state.db and its WAL, so nothing in
DATA_DIR changes): every row of `pieces` must name a file under store/ of
the row's size and SHA-256, and every file under store/ must have a row.
Prints one line "key=value ..." (files, bytes, ok, bad, unknown, rows,
rows_without_file, files_without_row, row_mismatch, tmp_files), then one
line per problem found ("problem: ...").
"""
import hashlib
import os
import re
import shutil
import sqlite3
import sys
import tempfile


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def main():
    data, repo = sys.argv[1], sys.argv[2]
    pool = {}  # path -> (sha, size)
    with open(os.path.join(repo, "chaos.files")) as f:
        for line in f:
            name, size, sha, path = line.split()
            pool[path] = (sha, int(size))
    listed = {sha for sha, _ in pool.values()}
    # Everything the Release lists (Packages and its by-hash names).
    for dirpath, _, names in os.walk(os.path.join(repo, "dists")):
        for n in names:
            if n == "Release":
                text = open(os.path.join(dirpath, n)).read()
                for m in re.finditer(r"^ ([0-9a-f]{64}) +\d+ +\S+$", text, re.M):
                    listed.add(m.group(1))
    store = os.path.join(data, "store")
    files = {}  # rel -> (sha, size)
    problems = []
    ok = bad = unknown = 0
    total = 0
    for dirpath, _, names in os.walk(store):
        for n in names:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, store)
            size = os.path.getsize(p)
            sha = sha256_file(p)
            files[rel] = (sha, size)
            total += size
            m = re.search(r"by-hash/SHA256/([0-9a-f]{64})$", rel)
            if rel in pool:
                if pool[rel] == (sha, size):
                    ok += 1
                else:
                    bad += 1
                    problems.append(f"{rel}: sha256 {sha} size {size}, the archive says {pool[rel][0]} size {pool[rel][1]}")
            elif m:
                if sha == m.group(1) and sha in listed:
                    ok += 1
                elif sha != m.group(1):
                    bad += 1
                    problems.append(f"{rel}: content sha256 is {sha}")
                else:
                    unknown += 1
                    problems.append(f"{rel}: not listed in the archive's Release")
            elif sha in listed:
                ok += 1
            else:
                unknown += 1
                problems.append(f"{rel}: sha256 {sha} size {size} is no file of the archive")
    tmp_files = sum(len(ns) for _, _, ns in os.walk(os.path.join(data, "tmp")))
    rows = rows_without_file = row_mismatch = 0
    files_without_row = 0
    db = os.path.join(data, "state.db")
    if os.path.exists(db):
        with tempfile.TemporaryDirectory() as t:
            for suffix in ("", "-wal"):
                if os.path.exists(db + suffix):
                    shutil.copy(db + suffix, os.path.join(t, "state.db" + suffix))
            conn = sqlite3.connect(os.path.join(t, "state.db"))
            seen = set()
            for path, sha, size in conn.execute("SELECT path, sha256, size FROM pieces"):
                rows += 1
                sha = sha.hex() if isinstance(sha, (bytes, memoryview)) else str(sha)
                rel = path
                if rel not in files and rel.startswith("store/"):
                    rel = rel[len("store/"):]
                seen.add(rel)
                if rel not in files:
                    rows_without_file += 1
                    problems.append(f"row {path}: no such file under store/")
                elif files[rel] != (sha, size):
                    row_mismatch += 1
                    problems.append(f"row {path}: sha256 {sha} size {size}, the file has {files[rel][0]} size {files[rel][1]}")
            conn.close()
            for rel in files:
                if rel not in seen:
                    files_without_row += 1
                    problems.append(f"{rel}: file under store/ without a row")
    else:
        problems.append("no state.db")
    print(
        f"files={len(files)} bytes={total} ok={ok} bad={bad} unknown={unknown} rows={rows} "
        f"rows_without_file={rows_without_file} files_without_row={files_without_row} "
        f"row_mismatch={row_mismatch} tmp_files={tmp_files}"
    )
    for p in problems[:50]:
        print("problem: " + p)
    if len(problems) > 50:
        print(f"problem: ... and {len(problems) - 50} more")


if __name__ == "__main__":
    main()
