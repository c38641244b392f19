#!/usr/bin/python3
"""A broken UPnP gateway for tests/e2e/upnp.rs (run inside a namespace).

usage: bad_gateway.py garbage|silent

Listens for SSDP M-SEARCH on 239.255.255.250:1900 and prints "M-SEARCH
from IP:PORT" for each.
  garbage: answers each search with bytes that are not HTTP, then with an
           HTTP 200 whose LOCATION points at a TCP server that answers
           the description request with garbage XML.
  silent:  answers each search with an HTTP 200 whose LOCATION points at a
           TCP server that accepts connections and never answers.
Exits after 120 s.
"""
import socket
import struct
import sys
import threading
import time


def log(*a):
    print(*a, flush=True)


def http_server(mode):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    held = []

    def serve():
        while True:
            c, peer = s.accept()
            log("HTTP connection from %s:%d" % peer)
            if mode == "silent":
                held.append(c)  # never answer, never close
                continue
            try:
                c.recv(4096)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                          b"Content-Length: 24\r\n\r\n<root><<<\x00\xff garbage")
            finally:
                c.close()

    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def main():
    mode = sys.argv[1]
    port = http_server(mode)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", 1900))
    mreq = struct.pack("4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton("0.0.0.0"))
    u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    log("listening; description server on port %d" % port)
    end = time.time() + 120
    u.settimeout(1)
    while time.time() < end:
        try:
            data, peer = u.recvfrom(4096)
        except socket.timeout:
            continue
        if not data.startswith(b"M-SEARCH"):
            continue
        log("M-SEARCH from %s:%d" % peer)
        if mode == "garbage":
            u.sendto(b"\x00\xffnot http at all\r\n\r\n", peer)
        ok = ("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
              "ST: urn:schemas-upnp-org:service:WANIPConnection:1\r\n"
              "LOCATION: http://127.0.0.1:%d/rootDesc.xml\r\n\r\n" % port)
        u.sendto(ok.encode(), peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
