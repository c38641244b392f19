#!/usr/bin/python3
"""The WAN-like mirror of bench/fleet/run.sh.

    wanmirror.py ROOT IP PORT RATE RTT_MS LOG

Serves ROOT under /debian/ over HTTP/1.1 (keep-alive, GET/HEAD, one Range
per request). Every response waits RTT_MS before its status line (one
round trip per request) and every body byte goes through ONE token bucket
of RATE bytes/s shared by all connections (the site's WAN link). Appends
"epoch path body_bytes status client_ip" per request to LOG.
"""
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, IP, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
RATE, RTT = float(sys.argv[4]), float(sys.argv[5]) / 1000.0
LOG = sys.argv[6]
CHUNK = 32 * 1024
BURST = 64 * 1024
_lock = threading.Lock()
_next = [0.0]  # when the bucket is next empty (monotonic seconds)
_log_lock = threading.Lock()


def take(n):
    """Blocks until n bytes may go out of the shared link."""
    with _lock:
        now = time.monotonic()
        start = max(_next[0], now - BURST / RATE)
        _next[0] = start + n / RATE
        wait = _next[0] - now
    if wait > 0:
        time.sleep(wait)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _log(self, sent, status):
        with _log_lock, open(LOG, "a") as f:
            f.write(f"{time.time():.3f} {urllib.parse.unquote(self.path.split('?')[0])} {sent} {status} {self.client_address[0]}\n")

    def _err(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(0, code)

    def _serve(self, body):
        if RTT > 0:
            time.sleep(RTT)
        path = urllib.parse.unquote(self.path.split("?")[0])
        if not path.startswith("/debian/") or ".." in path.split("/"):
            return self._err(404)
        fp = os.path.join(ROOT, path[len("/debian/"):])
        if not os.path.isfile(fp):
            return self._err(404)
        size = os.path.getsize(fp)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self._err(416)
            if m.group(1) == "":
                start = max(0, size - int(m.group(2)))
            else:
                start = int(m.group(1))
                if m.group(2):
                    end = min(size - 1, int(m.group(2)))
            if start > end or start >= size:
                return self._err(416)
            status = 206
        n = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(n))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(fp))))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            try:
                with open(fp, "rb") as f:
                    f.seek(start)
                    while sent < n:
                        b = f.read(min(CHUNK, n - sent))
                        if not b:
                            break
                        take(len(b))
                        self.wfile.write(b)
                        sent += len(b)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
        self._log(sent, status)

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    S((IP, PORT), H).serve_forever()
