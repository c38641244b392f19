#!/usr/bin/python3
"""A throttled mirror for bench/swarm/run.sh, scenario 3.

    slowmirror.py ROOT IP PORT RATE LOG

Serves ROOT under /slow/ over HTTP/1.1 (keep-alive, GET/HEAD, single
Range requests). Files under pool/ share ONE token bucket of RATE bytes/s
over all connections (nginx's limit_rate is per connection and lets the
first second's worth through at once, which for 1–8 MB packages is most of
the file); dists/ is not throttled. Appends "uri body_bytes status" per
request to LOG, like the nginx log of run.sh.
"""
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, IP, PORT, RATE, LOG = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
CHUNK = 64 * 1024
BURST = 64 * 1024
_lock = threading.Lock()
_vclock = [0.0]  # when the bucket is next empty (virtual time)
_log_lock = threading.Lock()


def take(n):
    with _lock:
        now = time.monotonic()
        start = max(_vclock[0], now - BURST / RATE)
        _vclock[0] = start + n / RATE
        wait = _vclock[0] - now
    if wait > 0:
        time.sleep(wait)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _log(self, sent, status):
        with _log_lock, open(LOG, "a") as f:
            f.write(f"{self.path.split('?')[0]} {sent} {status}\n")

    def _serve(self, body):
        path = self.path.split("?")[0]
        if not path.startswith("/slow/") or ".." in path.split("/"):
            return self._err(404)
        rel = path[len("/slow/"):]
        fp = os.path.join(ROOT, rel)
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
            slow = rel.startswith("pool/")
            try:
                with open(fp, "rb") as f:
                    f.seek(start)
                    while sent < n:
                        k = min(CHUNK, n - sent)
                        if slow:
                            take(k)
                        b = f.read(k)
                        self.wfile.write(b)
                        sent += len(b)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
        self._log(sent, status)

    def _err(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(0, code)

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    S((IP, PORT), H).serve_forever()
