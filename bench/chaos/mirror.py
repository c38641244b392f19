#!/usr/bin/python3
"""The mirror of bench/chaos/run.sh: a plain HTTP/1.1 file server whose
faults the script switches at run time.

    mirror.py ROOT IP PORT CONTROL LOG

Serves ROOT under /debian/ (keep-alive, GET/HEAD, single Range requests).
CONTROL is a file holding one word, read at most every 0.2 s:
  ok     serve normally;
  stall  answer nothing: new requests wait before their status line, and
         bodies being sent pause between 64 KiB chunks, until the word
         changes (connections stay open; nothing is closed);
  500    every new request gets "500 Internal Server Error" (bodies already
         being sent go on).
Appends "epoch uri body_bytes status" per request to LOG.
"""
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, IP, PORT, CONTROL, LOG = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
CHUNK = 64 * 1024
STALL_MAX = 600  # seconds one request waits at most in a stall
_mode = ["ok", 0.0]
_mode_lock = threading.Lock()
_log_lock = threading.Lock()


def mode():
    with _mode_lock:
        now = time.monotonic()
        if now - _mode[1] >= 0.2:
            try:
                with open(CONTROL) as f:
                    _mode[0] = f.read().strip() or "ok"
            except OSError:
                _mode[0] = "ok"
            _mode[1] = now
        return _mode[0]


def wait_stall():
    t = time.monotonic()
    while mode() == "stall" and time.monotonic() - t < STALL_MAX:
        time.sleep(0.2)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _log(self, sent, status):
        with _log_lock, open(LOG, "a") as f:
            f.write(f"{time.time():.1f} {self.path.split('?')[0]} {sent} {status}\n")

    def _serve(self, body):
        wait_stall()
        if mode() == "500":
            return self._err(500)
        path = self.path.split("?")[0]
        if not path.startswith("/debian/") or ".." in path.split("/"):
            return self._err(404)
        rel = path[len("/debian/"):]
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
            try:
                with open(fp, "rb") as f:
                    f.seek(start)
                    while sent < n:
                        wait_stall()
                        b = f.read(min(CHUNK, n - sent))
                        if not b:
                            break
                        self.wfile.write(b)
                        sent += len(b)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
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
    request_queue_size = 256


if __name__ == "__main__":
    S((IP, PORT), H).serve_forever()
