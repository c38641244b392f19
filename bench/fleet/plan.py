#!/usr/bin/python3
"""The seeded plan of bench/fleet/run.sh: popularity ranking, the two
index versions, and every client's arrival and wants.

    plan.py changed ALL_PACKAGES SEED NCHANGED
        -> names of the packages that get a new version in the update
    plan.py make ALL_PACKAGES OUTDIR SEED N NCHANGED NADDED WAVES WAVE_GAP
                 JITTER SIM_WAVES ZIPF_A ZIPF_S ZIPF_MAX
        -> OUTDIR/v1.Packages, OUTDIR/v2.Packages, OUTDIR/clients.tsv,
           OUTDIR/files.tsv, OUTDIR/plan.json

ALL_PACKAGES is apt-ftparchive's Packages of the whole pool (original
versions plus the rebuilt "+fleet1" ones). Ranking: the package names in a
seeded shuffle, with the large packages put at fixed ranks; rank r is
wanted by a client with probability min(ZIPF_MAX, ZIPF_A / r**ZIPF_S).
Index v1 lists every original package but the NADDED "added" ones; v2
lists the added ones too, and the NCHANGED changed ones at their new
version. A client arriving after the update sees v2 and draws its wants
from it (v1 clients never want an added package).

clients.tsv: k wave offset version bootstrap wants, where wants is
name=size=path,... ; offset is seconds from the first daemon's start.
"""
import json
import random
import sys

LARGE_RANKS = {  # name -> rank (1-based)
    "openjdk-17-jre-headless": 2,
    "git": 3,
    "rustc": 5,
    "libstd-rust-dev": 6,
    "openjdk-17-jdk-headless": 8,
}


def stanzas(path):
    out, cur = [], {}
    text = open(path, encoding="utf-8", errors="replace").read()
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        d = {}
        for ln in lines:
            if ln and not ln[0].isspace() and ":" in ln:
                k, v = ln.split(":", 1)
                d[k] = v.strip()
        d["_text"] = block.strip("\n")
        out.append(d)
    return out


def ranking(names, seed):
    rest = sorted(n for n in names if n not in LARGE_RANKS)
    random.Random(f"rank-{seed}").shuffle(rest)
    ranked = [None] * len(names)
    for n, r in LARGE_RANKS.items():
        if n in names and r - 1 < len(ranked):
            ranked[r - 1] = n
    it = iter(rest)
    for i in range(len(ranked)):
        if ranked[i] is None:
            ranked[i] = next(it)
    return ranked


def originals(st):
    return {s["Package"]: s for s in st if "+fleet1" not in s["Version"]}


def choose_changed(orig, seed, nchanged):
    ranked = ranking(set(orig), seed)
    # Popular and mid-sized: ranks 2..30, 0.2..8 MB, not the fixed large ones.
    cand = [n for n in ranked[1:30] if n not in LARGE_RANKS and 200_000 <= int(orig[n]["Size"]) <= 8_000_000]
    rnd = random.Random(f"changed-{seed}")
    return sorted(rnd.sample(cand, min(nchanged, len(cand))))


def main():
    cmd = sys.argv[1]
    st = stanzas(sys.argv[2])
    orig = originals(st)
    if cmd == "changed":
        seed, nchanged = int(sys.argv[3]), int(sys.argv[4])
        for n in choose_changed(orig, seed, nchanged):
            print(n)
        return
    assert cmd == "make"
    outdir = sys.argv[3]
    seed, n, nchanged, nadded, waves, gap, jitter = (int(x) for x in sys.argv[4:11])
    sim = {int(x) for x in sys.argv[11].split()} if sys.argv[11].strip() else set()
    za, zs, zmax = float(sys.argv[12]), float(sys.argv[13]), float(sys.argv[14])
    new = {s["Package"]: s for s in st if "+fleet1" in s["Version"]}
    ranked = ranking(set(orig), seed)
    changed = choose_changed(orig, seed, nchanged)
    missing = [c for c in changed if c not in new]
    if missing:
        sys.exit(f"plan: no rebuilt package for {missing}")
    # Added: mid ranks (10..60), so a few later clients want them.
    cand = [x for x in ranked[9:60] if x not in LARGE_RANKS and x not in changed]
    added = sorted(random.Random(f"added-{seed}").sample(cand, min(nadded, len(cand))))
    v1 = {x: orig[x] for x in orig if x not in added}
    v2 = dict(orig)
    for c in changed:
        v2[c] = new[c]
    for name, idx in (("v1", v1), ("v2", v2)):
        with open(f"{outdir}/{name}.Packages", "w") as f:
            for x in sorted(idx):
                f.write(idx[x]["_text"] + "\n\n")
    # Arrivals: N clients in WAVES waves GAP s apart; inside a wave, offsets
    # uniform in [0, JITTER) (the first client of wave 1 at 0), except the
    # SIM_WAVES, whose clients all start at the same instant. The update
    # happens halfway between the end of wave ceil(WAVES/2) and the next.
    rnd = random.Random(f"arrival-{seed}")
    per = [n // waves + (1 if w < n % waves else 0) for w in range(waves)]
    upd_after = (waves + 1) // 2
    t_upd = (upd_after - 1) * gap + (gap + jitter) / 2.0 if waves > 1 else None
    clients = []
    k = 0
    for w in range(waves):
        for i in range(per[w]):
            k += 1
            if (w + 1) in sim or (w == 0 and i == 0):
                off = w * gap
            else:
                off = w * gap + rnd.uniform(0, jitter)
            clients.append([k, w + 1, round(off, 2)])
    want_rnd = random.Random(f"wants-{seed}")
    rows, files = [], {}
    for k, w, off in clients:
        ver = "v2" if t_upd is not None and off > t_upd else "v1"
        idx = v2 if ver == "v2" else v1
        wants = []
        for r, x in enumerate(ranked, 1):
            p = min(zmax, za / r**zs)
            if want_rnd.random() < p and x in idx:
                wants.append(x)
        if not wants:
            wants = [ranked[0]]
        # Bootstrap: daemon 1, and one earlier daemon (started at least
        # 1 s before) when there is one.
        boot = [1]
        earlier = [c[0] for c in clients if c[0] not in (1, k) and c[2] <= off - 1]
        if earlier:
            boot.append(random.Random(f"boot-{seed}-{k}").choice(earlier))
        ws = []
        for x in wants:
            s = idx[x]
            files[s["Filename"]] = (int(s["Size"]), s["SHA256"], x, s["Version"])
            ws.append(f"{x}={s['Size']}={s['Filename']}")
        rows.append((k, w, off, ver, ",".join(str(b) for b in boot), ",".join(ws)))
    with open(f"{outdir}/clients.tsv", "w") as f:
        for r in rows:
            f.write("\t".join(str(x) for x in r) + "\n")
    with open(f"{outdir}/files.tsv", "w") as f:
        for p, (size, sha, x, v) in sorted(files.items()):
            f.write(f"{p}\t{size}\t{sha}\t{x}\t{v}\n")
    plan = {
        "n": n, "seed": seed, "waves": waves, "wave_gap": gap, "jitter": jitter,
        "sim_waves": sorted(sim), "update_at": t_upd, "per_wave": per,
        "zipf": {"a": za, "s": zs, "max": zmax},
        "packages_v1": len(v1), "packages_v2": len(v2),
        "bytes_v1": sum(int(s["Size"]) for s in v1.values()),
        "changed": changed, "added": added,
        "top_ranks": [(r, x, int(orig[x]["Size"])) for r, x in enumerate(ranked[:12], 1)],
        "unique_files_wanted": len(files),
        "unique_bytes_wanted": sum(v[0] for v in files.values()),
        "bytes_wanted_total": sum(int(w.split("=")[1]) for r in rows for w in r[5].split(",")),
        "wants_total": sum(len(r[5].split(",")) for r in rows),
    }
    with open(f"{outdir}/plan.json", "w") as f:
        json.dump(plan, f, indent=1)


main()
