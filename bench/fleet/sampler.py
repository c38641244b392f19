#!/usr/bin/python3
"""Samples the fleet's daemons for bench/fleet/run.sh.

    sampler.py PHASEDIR INTERVAL MAXSECS STOPFILE

Every INTERVAL s, for each daemon of PHASEDIR/daemons.list ("k pid ip
port start" lines, growing as daemons start): VmRSS, VmHWM, CPU seconds
(/proc) and, from /status.json, peer connections, DHT table size and byte
counters; one JSON line per daemon per sweep to PHASEDIR/samples.jsonl,
and the load average. When STOPFILE exists (or after MAXSECS) a last
sweep writes each daemon's whole status.json to PHASEDIR/final/K.json
and its /proc figures to PHASEDIR/final.jsonl.
"""
import json
import os
import sys
import time
import urllib.request

PHASE, INTERVAL, MAXSECS, STOP = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
HZ = os.sysconf("SC_CLK_TCK")


def daemons():
    out = []
    try:
        with open(f"{PHASE}/daemons.list") as f:
            for ln in f:
                p = ln.split()
                if len(p) >= 5:
                    out.append((int(p[0]), int(p[1]), p[2], int(p[3]), float(p[4])))
    except OSError:
        pass
    return out


def proc(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    k, v = ln.split(":", 1)
                    d[k] = int(v.split()[0])
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        d["cpu"] = (int(rest[11]) + int(rest[12])) / HZ
        d["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return {"rss_kb": d.get("VmRSS"), "hwm_kb": d.get("VmHWM"), "threads": d.get("Threads"), "cpu": d.get("cpu"), "fds": d.get("fds")}


def status(ip, port):
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/status.json", timeout=3) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - a daemon not up yet, or busy
        return None


def sweep(out, final=False):
    t = time.time()
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    out.write(json.dumps({"t": t, "load": load}) + "\n")
    for k, pid, ip, port, _start in daemons():
        p = proc(pid)
        s = status(ip, port)
        row = {"t": t, "k": k, "proc": p}
        if s is not None:
            sw = s.get("swarm") or {}
            dht = ((sw.get("discovery") or {}).get("dht")) or {}
            row.update({
                "conns": sw.get("connections"),
                "dht_nodes": dht.get("nodes"),
                "lookups": s.get("lookups"),
                "from_peers": s.get("bytes_from_peers"),
                "from_mirror": s.get("bytes_from_mirror"),
                "uploaded": s.get("bytes_uploaded"),
            })
        out.write(json.dumps(row) + "\n")
        if final:
            os.makedirs(f"{PHASE}/final", exist_ok=True)
            with open(f"{PHASE}/final/{k}.json", "w") as f:
                json.dump(s, f)
            with open(f"{PHASE}/final.jsonl", "a") as f:
                f.write(json.dumps({"k": k, "proc": p, "alive": p is not None, "status": s is not None}) + "\n")
    out.flush()


def main():
    t0 = time.monotonic()
    with open(f"{PHASE}/samples.jsonl", "a") as out:
        while not os.path.exists(STOP) and time.monotonic() - t0 < MAXSECS:
            t = time.monotonic()
            sweep(out)
            while time.monotonic() - t < INTERVAL and not os.path.exists(STOP):
                time.sleep(0.2)
        sweep(out, final=True)


main()
