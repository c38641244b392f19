#!/usr/bin/python3
"""The report of bench/fleet/run.sh: one table on stdout, and JSON.

    report.py WORK REPORT_JSON
"""
import glob
import json
import os
import sys
from collections import defaultdict

WORK, OUT = sys.argv[1], sys.argv[2]


def load_json(p, default=None):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_float(p):
    try:
        with open(p) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    i = min(len(xs) - 1, max(0, int(round(q / 100.0 * len(xs) + 0.5)) - 1))
    return xs[i]


def f(x, d=1, unit=""):
    return "n/a" if x is None else f"{x:.{d}f}{unit}"


meta = load_json(f"{WORK}/meta.json", {})
plan = load_json(f"{WORK}/plan/plan.json", {})
files = {}
with open(f"{WORK}/plan/files.tsv") as fh:
    for ln in fh:
        p, size, sha, name, ver = ln.rstrip("\n").split("\t")
        files["/debian/" + p] = (int(size), name, ver)
sizes_all = {}
for idx in ("v1", "v2"):
    pass
unique = plan.get("unique_bytes_wanted", 0)
wanted_total = plan.get("bytes_wanted_total", 0)


def mirror(phase):
    per = defaultdict(lambda: [0, 0])
    pool = idx = reqs = 0
    rows = []
    try:
        with open(f"{WORK}/{phase}/mirror.log") as fh:
            for ln in fh:
                p = ln.split()
                if len(p) < 4:
                    continue
                t, path, sent, status = float(p[0]), p[1], int(p[2]), p[3]
                reqs += 1
                if "/pool/" in path:
                    pool += sent
                    per[path][0] += sent
                    per[path][1] += 1
                    rows.append((t, sent))
                else:
                    idx += sent
    except OSError:
        return None
    return {"pool_bytes": pool, "index_bytes": idx, "requests": reqs, "per_file": per, "rows": rows}


def results(phase):
    out = []
    try:
        with open(f"{WORK}/{phase}/results") as fh:
            for ln in fh:
                p = ln.split()
                if len(p) < 10:
                    continue
                out.append({"k": int(p[0]), "wave": int(p[1]), "offset": float(p[2]), "version": p[3],
                            "update_rc": p[4], "update_s": float(p[5]), "download_rc": p[6],
                            "download_s": float(p[7]), "wanted": int(p[8]), "good": int(p[9])})
    except OSError:
        pass
    return out


def ok(r):
    return r["update_rc"] == "0" and r["download_rc"] == "0" and r["good"] == r["wanted"]


def apt_stats(rs):
    good = [r for r in rs if ok(r)]
    d = [r["download_s"] for r in good]
    u = [r["update_s"] for r in good]
    return {"runs": len(rs), "failed": len(rs) - len(good),
            "download_p50": pct(d, 50), "download_p95": pct(d, 95), "download_max": max(d) if d else None,
            "update_p50": pct(u, 50), "update_p95": pct(u, 95), "update_max": max(u) if u else None,
            "failures": [{k: r[k] for k in ("k", "wave", "update_rc", "download_rc", "wanted", "good")} for r in rs if not ok(r)][:20]}


rep = {"meta": meta, "plan": plan}
fm = mirror("fleet")
bm = mirror("baseline") if meta.get("baseline") == 1 else None
fr, br = results("fleet"), results("baseline")
fa, ba = apt_stats(fr), (apt_stats(br) if br else None)
n = meta.get("n", 0)

# Mirror: bytes / unique, files sent more than once.
again = []
if fm:
    for path, (sent, nreq) in fm["per_file"].items():
        size = files.get(path, (None,))[0]
        if size is None:
            again.append({"file": os.path.basename(path), "size": None, "times": None, "requests": nreq, "sent": sent, "unwanted": True})
        elif sent > size * 1.05:
            again.append({"file": os.path.basename(path), "size": size, "times": round(sent / size, 2), "requests": nreq, "sent": sent})
    again.sort(key=lambda a: -(a["sent"] - (a["size"] or 0)))
rep["mirror"] = {
    "fleet_pool_bytes": fm and fm["pool_bytes"], "fleet_index_bytes": fm and fm["index_bytes"],
    "unique_bytes_wanted": unique, "bytes_wanted_total": wanted_total,
    "ratio": (fm["pool_bytes"] / unique) if fm and unique else None,
    "baseline_pool_bytes": bm and bm["pool_bytes"],
    "files_sent_more_than_once": again,
}

# Peer share, from each daemon's final status.json (package bytes: the
# swarms' counters).
peers = mirror_b = 0
peers_top = mirror_top = 0
finals = 0
wave_of = {}
with open(f"{WORK}/plan/clients.tsv") as fh:
    for ln in fh:
        x = ln.split("\t")
        wave_of[int(x[0])] = int(x[1])
by_wave = defaultdict(lambda: [0, 0])  # wave -> [from peers, from mirror]
for p in glob.glob(f"{WORK}/fleet/final/*.json"):
    s = load_json(p)
    if not s:
        continue
    finals += 1
    k = int(os.path.basename(p).split(".")[0])
    for sw in s.get("swarms") or []:
        peers += sw.get("bytes_from_peers", 0)
        mirror_b += sw.get("bytes_from_mirror", 0)
        by_wave[wave_of.get(k, 0)][0] += sw.get("bytes_from_peers", 0)
        by_wave[wave_of.get(k, 0)][1] += sw.get("bytes_from_mirror", 0)
    peers_top += s.get("bytes_from_peers", 0)
    mirror_top += s.get("bytes_from_mirror", 0)
rep["peers"] = {
    "daemons_reporting": finals,
    "swarm_bytes_from_peers": peers, "swarm_bytes_from_mirror": mirror_b,
    "share_from_peers": peers / (peers + mirror_b) if peers + mirror_b else None,
    "daemon_bytes_from_peers": peers_top, "daemon_bytes_from_mirror": mirror_top,
    "possible_share": 1 - unique / wanted_total if wanted_total else None,
}

# DHT: nft counters per daemon, over its life until the clients were done,
# and over the idle tail.
starts = {}
try:
    with open(f"{WORK}/fleet/daemons.list") as fh:
        for ln in fh:
            p = ln.split()
            starts[int(p[0])] = float(p[4])
except OSError:
    pass


def nft(p):
    c, t = defaultdict(lambda: [0, 0]), None
    try:
        with open(p) as fh:
            for ln in fh:
                x = ln.split()
                if x[0] == "t":
                    t = float(x[1])
                elif len(x) == 4:
                    c[int(x[1])][0] += int(x[2])
                    c[int(x[1])][1] += int(x[3])
    except (OSError, ValueError):
        return None, None
    return c, t


c1, t1 = nft(f"{WORK}/fleet/nft.done")
c2, t2 = nft(f"{WORK}/fleet/nft.tail")
dht = {}
if c1 and t1:
    run_b = [c1[k][1] / (t1 - starts[k]) for k in starts if t1 > starts[k]]
    run_p = [c1[k][0] / (t1 - starts[k]) for k in starts if t1 > starts[k]]
    dht.update({"run_bytes_per_node_s_mean": sum(run_b) / len(run_b) if run_b else None,
                "run_bytes_per_node_s_max": max(run_b) if run_b else None,
                "run_packets_per_node_s_mean": sum(run_p) / len(run_p) if run_p else None,
                "run_packets_per_node_s_max": max(run_p) if run_p else None,
                "run_total_bytes": sum(v[1] for v in c1.values()), "run_total_packets": sum(v[0] for v in c1.values())})
    per_node = [c1[k][1] / 1000 for k in starts]
    dht.update({"run_kb_per_node_p50": pct(per_node, 50), "run_kb_per_node_max": max(per_node) if per_node else None})
if c1 and c2 and t2 and t2 > t1:
    tb = [(c2[k][1] - c1[k][1]) / (t2 - t1) for k in starts]
    tp = [(c2[k][0] - c1[k][0]) / (t2 - t1) for k in starts]
    dht.update({"tail_seconds": t2 - t1,
                "tail_bytes_per_node_s_mean": sum(tb) / len(tb) if tb else None,
                "tail_bytes_per_node_s_max": max(tb) if tb else None,
                "tail_packets_per_node_s_mean": sum(tp) / len(tp) if tp else None,
                "tail_packets_per_node_s_max": max(tp) if tp else None})
    # Over each daemon's whole life, start and idle tail together: the
    # figure to hold against a long-running node's rate (Apt-P2P's 200-300
    # B/s were measured on nodes that ran for days). A tail of 16 min
    # (TAIL=960) takes in mainline's table refresh (every 15 min) and its
    # ping rounds (every 5 min).
    lb = [c2[k][1] / (t2 - starts[k]) for k in starts if t2 > starts[k]]
    ls = [t2 - starts[k] for k in starts if t2 > starts[k]]
    dht.update({"life_bytes_per_node_s_mean": sum(lb) / len(lb) if lb else None,
                "life_bytes_per_node_s_max": max(lb) if lb else None,
                "life_seconds_min": min(ls) if ls else None,
                "life_seconds_max": max(ls) if ls else None})
try:
    with open(f"{WORK}/fleet/dht-kinds.json") as fh:
        dht["by_kind"] = json.load(fh)
except (OSError, ValueError):
    pass
rep["dht"] = dht

# Samples: connections, load; final: RSS peak, CPU.
maxconn = defaultdict(int)
endconn = {}
lookups = {}
loads = []
try:
    with open(f"{WORK}/fleet/samples.jsonl") as fh:
        for ln in fh:
            s = json.loads(ln)
            if "load" in s:
                loads.append(s["load"][0])
            elif s.get("conns") is not None:
                maxconn[s["k"]] = max(maxconn[s["k"]], s["conns"])
                endconn[s["k"]] = s["conns"]
                if s.get("lookups") is not None:
                    lookups[s["k"]] = s["lookups"]
except OSError:
    pass
hwm, rss, cpu, dead = [], [], [], []
hwm_by = []  # (peak RSS MB, daemon number): which daemons are the largest
try:
    with open(f"{WORK}/fleet/final.jsonl") as fh:
        for ln in fh:
            s = json.loads(ln)
            p = s.get("proc")
            if not p:
                dead.append(s["k"])
                continue
            hwm.append(p["hwm_kb"] / 1024)
            hwm_by.append((p["hwm_kb"] / 1024, s["k"]))
            rss.append(p["rss_kb"] / 1024)
            cpu.append(p["cpu"])
except OSError:
    pass
mc = list(maxconn.values())
ec = list(endconn.values())
rep["daemons"] = {
    "conns_max_p50": pct(mc, 50), "conns_max_max": max(mc) if mc else None,
    "conns_end_mean": sum(ec) / len(ec) if ec else None,
    "peak_rss_mb_p50": pct(hwm, 50), "peak_rss_mb_p95": pct(hwm, 95), "peak_rss_mb_max": max(hwm) if hwm else None,
    "peak_rss_top": [[k, round(mb, 1)] for mb, k in sorted(hwm_by, reverse=True)[:3]],
    "rss_end_mb_p50": pct(rss, 50), "cpu_s_p50": pct(cpu, 50), "cpu_s_max": max(cpu) if cpu else None,
    "cpu_s_total": sum(cpu), "not_running_at_end": dead,
    "load1_max": max(loads) if loads else None,
    "lookups_p50": pct(list(lookups.values()), 50), "lookups_max": max(lookups.values()) if lookups else None,
}
rep["apt"] = {"fleet": fa, "baseline": ba}

# Per wave: clients, fleet/baseline median download, fleet mirror pool bytes
# in the wave's window.
t0 = read_float(f"{WORK}/fleet/t0")
lead = meta.get("daemon_lead", 0)
gap = meta.get("wave_gap", 1)
waves = []
for w in range(1, meta.get("waves", 0) + 1):
    fw = [r["download_s"] for r in fr if r["wave"] == w and ok(r)]
    bw = [r["download_s"] for r in br if r["wave"] == w and ok(r)]
    mb = None
    if fm and t0 is not None:
        lo = t0 + lead + (w - 1) * gap
        hi = t0 + lead + w * gap if w < meta.get("waves", 0) else float("inf")
        mb = sum(s for t, s in fm["rows"] if lo <= t < hi)
    vers = sorted({r["version"] for r in (fr or br) if r["wave"] == w})
    waves.append({"wave": w, "clients": len([r for r in (fr or br) if r["wave"] == w]), "index": ",".join(vers),
                  "daemons_from_mirror": by_wave[w][1], "daemons_from_peers": by_wave[w][0],
                  "fleet_p50": pct(fw, 50), "fleet_max": max(fw) if fw else None,
                  "baseline_p50": pct(bw, 50), "baseline_max": max(bw) if bw else None, "mirror_pool_bytes": mb})
rep["waves"] = waves
notes = []
if os.path.exists(f"{WORK}/notes"):
    notes = open(f"{WORK}/notes").read().splitlines()
rep["notes"] = notes
with open(OUT, "w") as fh:
    json.dump(rep, fh, indent=1, default=str)

# ------------------------------------------------------------------ table
MB = 1e6
m = rep["mirror"]
pe = rep["peers"]
d = rep["daemons"]
sim = meta.get("sim_waves", "")
print()
print(f"debtorrent fleet benchmark — {meta.get('date')}, {meta.get('nproc')} cores, total {meta.get('total_seconds')} s")
print(f"binary: {meta.get('binary')}")
print(f"{n} daemons + {n} apt clients, {meta.get('waves')} waves {meta.get('wave_gap')} s apart (jitter {meta.get('jitter')} s; "
      f"simultaneous: waves {sim or 'none'}), index update at +{f(plan.get('update_at'), 0)} s "
      f"({len(plan.get('changed', []))} changed, {len(plan.get('added', []))} added); mirror {meta.get('mirror_rate', 0) / MB:.0f} MB/s, "
      f"RTT {meta.get('rtt_ms')} ms; tracker {'yes' if meta.get('tracker') else 'no'}; {plan.get('packages_v1')} packages "
      f"({plan.get('bytes_v1', 0) / MB:.0f} MB), {plan.get('wants_total')} wants, {wanted_total / MB:.0f} MB wanted in all, "
      f"{unique / MB:.0f} MB unique ({plan.get('unique_files_wanted')} files). MB = 10^6 bytes")
print()
rows = [
    ("mirror package bytes / unique wanted", f"{f(m['ratio'], 3)}x ({f((m['fleet_pool_bytes'] or 0) / MB, 0)} / {f(unique / MB, 0)} MB)", "<= 1.05"),
    ("package bytes from peers", f"{f(100 * pe['share_from_peers'] if pe['share_from_peers'] is not None else None, 1)} % "
     f"(possible {f(100 * pe['possible_share'] if pe['possible_share'] is not None else None, 1)} %)", ">= 90 %"),
    ("files the mirror sent more than once", f"{len([a for a in again if not a.get('unwanted')])} files, "
     f"{f(sum(a['sent'] - (a['size'] or 0) for a in again) / MB, 0)} MB extra", "0"),
    ("apt download s, fleet p50/p95/max", f"{f(fa['download_p50'])} / {f(fa['download_p95'])} / {f(fa['download_max'])}", "p95 <= baseline, p50 < baseline"),
    ("apt download s, baseline p50/p95/max", f"{f(ba and ba['download_p50'])} / {f(ba and ba['download_p95'])} / {f(ba and ba['download_max'])}" if ba else "not run", ""),
    ("apt update s, fleet / baseline p50/p95", f"{f(fa['update_p50'])}/{f(fa['update_p95'])} / " + (f"{f(ba['update_p50'])}/{f(ba['update_p95'])}" if ba else "n/a"), ""),
    ("failed apt runs, fleet / baseline", f"{fa['failed']} of {fa['runs']} / " + (f"{ba['failed']} of {ba['runs']}" if ba else "n/a"), "0"),
    ("DHT B/s per node, run mean/max", f"{f(dht.get('run_bytes_per_node_s_mean'), 0)} / {f(dht.get('run_bytes_per_node_s_max'), 0)}", "<= 300"),
    ("DHT B/s per node, idle tail mean/max", f"{f(dht.get('tail_bytes_per_node_s_mean'), 0)} / {f(dht.get('tail_bytes_per_node_s_max'), 0)} ({f(dht.get('tail_seconds'), 0)} s)", "<= 300"),
    ("DHT kB per node over the run p50/max, lookups p50/max", f"{f(dht.get('run_kb_per_node_p50'), 0)} / {f(dht.get('run_kb_per_node_max'), 0)}, {f(d.get('lookups_p50'), 0)} / {f(d.get('lookups_max'), 0)}", ""),
    ("DHT B/s per node, whole life mean/max", f"{f(dht.get('life_bytes_per_node_s_mean'), 0)} / {f(dht.get('life_bytes_per_node_s_max'), 0)} ({f(dht.get('life_seconds_min'), 0)}-{f(dht.get('life_seconds_max'), 0)} s)", "<= 300"),
    ("DHT packets/s per node, run / tail", f"{f(dht.get('run_packets_per_node_s_mean'), 2)} / {f(dht.get('tail_packets_per_node_s_mean'), 2)}", ""),
    ("peer connections per daemon", f"max over run p50 {f(d['conns_max_p50'], 0)}, max {f(d['conns_max_max'], 0)}; at end mean {f(d['conns_end_mean'], 1)}", ""),
    ("peak RSS per daemon MB p50/p95/max", f"{f(d['peak_rss_mb_p50'])} / {f(d['peak_rss_mb_p95'])} / {f(d['peak_rss_mb_max'])}", "<= 40"),
    ("largest daemons (number: peak MB)", ", ".join(f"{k}: {mb}" for k, mb in d.get("peak_rss_top") or []), ""),
    ("CPU s per daemon p50/max (all)", f"{f(d['cpu_s_p50'])} / {f(d['cpu_s_max'])} ({f(d['cpu_s_total'], 0)})", ""),
    ("load average (1 min)", f"max {f(d['load1_max'], 2)}; start {meta.get('load_fleet_start')}, end {meta.get('load_fleet_end')}", ""),
]
w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1]) for r in rows)
print(f"{'':{w0}}  {'measured':{w1}}  goal")
for a, b, c in rows:
    print(f"{a:{w0}}  {b:{w1}}  {c}")
if d["not_running_at_end"]:
    print(f"daemons not running at the end: {d['not_running_at_end']}")
print()
print("per wave: clients, index version, apt download s p50/max (fleet, baseline), package MB the wave's daemons took from")
print("the mirror and from peers (their status.json), mirror package MB sent in the wave's time window (its log)")
for w in waves:
    print(f"  wave {w['wave']}: {w['clients']:4d} clients  {w['index']:6s}  fleet {f(w['fleet_p50'])}/{f(w['fleet_max'])}"
          f"  baseline {f(w['baseline_p50'])}/{f(w['baseline_max'])}  daemons: mirror {w['daemons_from_mirror'] / MB:.0f} MB,"
          f" peers {w['daemons_from_peers'] / MB:.0f} MB; window {f((w['mirror_pool_bytes'] or 0) / MB, 0)} MB")
bk = dht.get("by_kind")
if bk and bk.get("total_bytes"):
    print()
    print(f"DHT traffic by message (dhtsniff.py, {bk['seconds']:.0f} s, {bk['total_packets']} packets,"
          f" {bk['total_bytes'] / MB:.1f} MB; get_peers answers with values {bk['get_peers_answers_with_values']},"
          f" peers in them {bk['peers_in_values']})")
    for k, v in bk["by_kind"].items():
        print(f"  {k:24s} {v['packets']:8d} packets {v['bytes'] / MB:7.2f} MB  {100 * v['bytes'] / bk['total_bytes']:5.1f} %")
if again:
    print()
    print("files the mirror sent more than once (fleet): times = bytes sent / size")
    for a in again[:25]:
        if a.get("unwanted"):
            print(f"  {a['file']}: not wanted by any client, {a['sent']} bytes in {a['requests']} requests")
        else:
            print(f"  {a['file']:60s} {a['size'] / MB:7.1f} MB  x{a['times']:.2f}  ({a['requests']} requests)")
    if len(again) > 25:
        print(f"  ... {len(again) - 25} more in the JSON")
fails = fa["failures"] + ((ba or {}).get("failures") or [])
if fails:
    print()
    print(f"failed apt runs (first {len(fails)}): " + "; ".join(f"k{x['k']} wave {x['wave']} update {x['update_rc']} download {x['download_rc']} {x['good']}/{x['wanted']}" for x in fails))
for ph in ("fleet", "baseline"):
    try:
        lines = open(f"{WORK}/{ph}/failures").read().splitlines()
    except OSError:
        continue
    rep.setdefault("failure_logs", {})[ph] = lines[:200]
    print()
    print(f"{ph} failures (apt output, first 30 lines):")
    for x in lines[:30]:
        print(f"  {x}")
if rep.get("failure_logs"):
    with open(OUT, "w") as fh:
        json.dump(rep, fh, indent=1, default=str)
if notes:
    print()
    print("notes:")
    for x in notes:
        print(f"  - {x}")
