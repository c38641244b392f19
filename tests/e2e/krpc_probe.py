#!/usr/bin/python3
"""Send libtorrent-style BEP 5 queries to one DHT node; print what it answers.

usage: krpc_probe.py IP PORT [TRIES]

For each query (ping, find_node, get_peers) and each transaction-id length
(1, 2, 4, 8 bytes; libtorrent 2.0 sends 2), sends the query TRIES times
(default 3) from one UDP socket, waits up to 1 s for each reply, and prints
one JSON line:

  {"q": "ping", "tid_len": 2, "sent": 3, "answered": 3, "echoed": 3, "ro": 0}

answered: replies received; echoed: replies whose "t" equals the id sent;
ro: replies carrying "ro": 1 (BEP 43). Used for the figures in
docs/swarm-design.md §2.5; the e2e test `dht_answers_every_transaction_id_length`
checks the same thing from Rust. Loopback or a namespace only: the caller
picks the address.
"""
import json
import os
import socket
import sys


def benc(x):
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, str):
        return benc(x.encode())
    if isinstance(x, dict):
        out = b"d"
        for k in sorted(x, key=lambda k: k.encode() if isinstance(k, str) else k):
            out += benc(k) + benc(x[k])
        return out + b"e"
    raise TypeError(type(x))


def bdec(b, i=0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"d":
        i += 1
        d = {}
        while b[i:i + 1] != b"e":
            k, i = bdec(b, i)
            v, i = bdec(b, i)
            d[k] = v
        return d, i + 1
    if c == b"l":
        i += 1
        out = []
        while b[i:i + 1] != b"e":
            v, i = bdec(b, i)
            out.append(v)
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


def query(q, tid, own_id):
    args = {"id": own_id}
    if q == "find_node":
        args["target"] = os.urandom(20)
    elif q == "get_peers":
        args["info_hash"] = os.urandom(20)
    return benc({"t": tid, "y": "q", "q": q, "a": args})


def main():
    ip, port = sys.argv[1], int(sys.argv[2])
    tries = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    own_id = os.urandom(20)
    for q in ("ping", "find_node", "get_peers"):
        for n in (1, 2, 4, 8):
            answered = echoed = ro = 0
            for _ in range(tries):
                tid = os.urandom(n)
                s.sendto(query(q, tid, own_id), (ip, port))
                try:
                    data, _ = s.recvfrom(65536)
                except socket.timeout:
                    continue
                answered += 1
                try:
                    msg, _ = bdec(data)
                except (ValueError, IndexError):
                    continue
                if isinstance(msg, dict):
                    echoed += msg.get(b"t") == tid
                    ro += msg.get(b"ro") == 1
            print(json.dumps({"q": q, "tid_len": n, "sent": tries,
                              "answered": answered, "echoed": echoed, "ro": ro}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
