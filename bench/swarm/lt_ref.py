#!/usr/bin/python3
"""libtorrent reference for benchmark 1 (docs/swarm-design.md §15, appendix).

    lt_ref.py FILE WORKDIR RUNS SEED_IP LEECH_IP PORT

A standard torrent of FILE (default piece size), a seed session on
SEED_IP:PORT (seed_mode: no start-up check) and, per run, a fresh leecher
session on LEECH_IP:PORT+1 in a fresh folder. TCP only (uTP off), no
DHT/LSD/UPnP/NAT-PMP. Times connect_peer -> is_seeding and prints one line
per run: "lt_run SECONDS". Every wait has a time limit.
"""
import os
import shutil
import sys
import time

import libtorrent as lt

RUN_LIMIT = 120.0


def session(ip, port):
    return lt.session(
        {
            "listen_interfaces": f"{ip}:{port}",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_tcp": True,
            "enable_incoming_tcp": True,
            "alert_mask": 0,
        }
    )


def wait_listen(s, limit=10.0):
    t = time.monotonic() + limit
    while time.monotonic() < t:
        if s.is_listening() and s.listen_port():
            return s.listen_port()
        time.sleep(0.01)
    raise SystemExit("lt_ref: session does not listen")


def main():
    path, work, runs, seed_ip, leech_ip, port = sys.argv[1:7]
    runs, port = int(runs), int(port)
    path = os.path.abspath(path)
    d, name = os.path.split(path)
    fs = lt.file_storage()
    lt.add_files(fs, path)
    ct = lt.create_torrent(fs)
    t0 = time.monotonic()
    lt.set_piece_hashes(ct, d)
    ti = lt.torrent_info(ct.generate())
    print(f"lt_info piece_length={ti.piece_length()} pieces={ti.num_pieces()} "
          f"hash_secs={time.monotonic() - t0:.2f}", flush=True)

    seed = session(seed_ip, port)
    sport = wait_listen(seed)
    sh = seed.add_torrent({"ti": ti, "save_path": d, "flags": lt.torrent_flags.seed_mode})
    t = time.monotonic() + 30
    while not sh.status().is_seeding:
        if time.monotonic() > t:
            raise SystemExit("lt_ref: seed not seeding")
        time.sleep(0.01)

    for r in range(runs):
        ldir = os.path.join(work, f"lt-leech-{r}")
        shutil.rmtree(ldir, ignore_errors=True)
        os.makedirs(ldir)
        leech = session(leech_ip, port + 1)
        wait_listen(leech)
        lh = leech.add_torrent({"ti": ti, "save_path": ldir})
        t = time.monotonic() + 10
        while lh.status().state in (lt.torrent_status.checking_files,
                                    lt.torrent_status.checking_resume_data):
            if time.monotonic() > t:
                raise SystemExit("lt_ref: leecher stuck checking")
            time.sleep(0.01)
        # Host-backed page cache for the GB this leecher writes (run.sh,
        # prefault): written and deleted now, taken by the transfer that
        # follows.
        try:
            mb = int(os.environ.get("PREFAULT_MB", "0") or 0)
        except ValueError:
            mb = 0
        if mb > 0:
            pf = os.path.join(work, "prefault")
            chunk = bytes(1 << 20)
            with open(pf, "wb") as f:
                for _ in range(mb):
                    f.write(chunk)
            os.unlink(pf)
        start = time.monotonic()
        lh.connect_peer((seed_ip, sport))
        ok = False
        while time.monotonic() - start < RUN_LIMIT:
            st = lh.status()
            if st.is_seeding:
                ok = True
                break
            time.sleep(0.005)
        secs = time.monotonic() - start
        done = lh.status().total_wanted_done
        if ok:
            print(f"lt_run {secs:.3f}", flush=True)
        else:
            print(f"lt_fail after {secs:.1f}s, {done} bytes done", flush=True)
        leech.remove_torrent(lh)
        del lh
        del leech
        shutil.rmtree(ldir, ignore_errors=True)
    del sh
    del seed


if __name__ == "__main__":
    main()
