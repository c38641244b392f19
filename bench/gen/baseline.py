#!/usr/bin/env python3
"""A straightforward Python implementation of the dt1 format
(shared/design/torrent-format.md), the baseline debtorrent-gen is measured
against. Prints the info hash of an uncompressed index."""
import hashlib
import re
import sys

HEX = re.compile(rb"^[0-9A-Fa-f]{64}$")
FIELDS = {b"filename", b"size", b"sha256", b"directory", b"checksums-sha256"}


def paragraphs(data):
    para, cur = {}, None
    for line in data.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t"):
            if para:
                yield para
            para, cur = {}, None
            continue
        if line[:1] in (b" ", b"\t"):
            if cur is not None:
                para[cur] += b"\n" + line.strip(b" \t")
            continue
        if b":" not in line:
            cur = None
            continue
        name, value = line.split(b":", 1)
        name = name.strip(b" \t").lower()
        if name in para or name not in FIELDS:
            cur = None
            continue
        para[name] = value.strip(b" \t")
        cur = name
    if para:
        yield para


def valid(path, size, sha):
    try:
        p = path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not p or p.startswith("/") or "\\" in p or "\0" in p:
        return None
    if any(c in ("", ".", "..") for c in p.split("/")):
        return None
    if not size.isdigit() or not size.isascii():
        return None
    n = int(size)
    if n <= 0 or n >= 2**63 or not HEX.match(sha):
        return None
    return (p.encode(), n, bytes.fromhex(sha.decode()))


def entries(data, kind):
    for para in paragraphs(data):
        if kind is None:
            if b"filename" in para:
                kind = "packages"
            elif b"directory" in para or b"checksums-sha256" in para:
                kind = "sources"
        if kind == "packages":
            if all(k in para for k in (b"filename", b"size", b"sha256")):
                yield valid(para[b"filename"], para[b"size"], para[b"sha256"])
        elif kind == "sources":
            if b"directory" in para and b"checksums-sha256" in para:
                for line in para[b"checksums-sha256"].split(b"\n"):
                    f = line.split()
                    if len(f) == 3:
                        yield valid(para[b"directory"] + b"/" + f[2], f[1], f[0])


def info_hash(data):
    by_path = {}
    for e in entries(data, None):
        if e is not None:
            by_path.setdefault(e[0], set()).add(e[1:])
    files = []
    for path in sorted(by_path):
        if len(by_path[path]) == 1:
            (size, sha), = by_path[path]
            comps = b"".join(b"%d:%s" % (len(c), c) for c in path.split(b"/"))
            files.append(b"d6:lengthi%de4:pathl%se6:sha25632:%se" % (size, comps, sha))
    info = b"d10:debtorrenti1e5:filesl" + b"".join(files) + b"e4:name7:archivee"
    return hashlib.sha1(info).hexdigest()


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        print(info_hash(f.read()))
