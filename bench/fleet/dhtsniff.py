#!/usr/bin/env python3
"""What the fleet's DHT traffic is made of: packets and bytes by message.

Sniffs UDP on `lo` (AF_PACKET, so root) for one port, decodes each KRPC
message's `y` and `q`, pairs answers with their queries by (addresses,
transaction id), and writes a JSON summary. The nft counters in run.sh say
how much; this says what, which is what a change to the DHT has to aim at.

Bounded: stops at the stop file or after MAXSECS, whichever comes first.

Usage: dhtsniff.py PORT STOPFILE OUT.json [MAXSECS]
"""
import json
import os
import socket
import struct
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "swarm"))
from peers import bdec  # noqa: E402  (bench/swarm/peers.py: stdlib only at import)


def main():
    port, stop, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    maxsecs = float(sys.argv[4]) if len(sys.argv) > 4 else 900
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind(("lo", 0))
    s.settimeout(0.5)
    stats = defaultdict(lambda: [0, 0])  # kind -> [packets, bytes]
    values = [0, 0]  # get_peers answers with values: count, peers in them
    pending = {}
    t0 = time.monotonic()
    last_check = 0.0
    while time.monotonic() - t0 < maxsecs:
        now = time.monotonic()
        if now - last_check > 1:
            last_check = now
            try:
                open(stop).close()
                break
            except OSError:
                pass
        try:
            pkt, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        # lo delivers each packet twice to a packet socket (out and in).
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if len(pkt) < 14 + 20 + 8 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17:
            continue
        src, dst = ip[12:16], ip[16:20]
        sport, dport, ulen = struct.unpack("!HHH", ip[ihl:ihl + 6])
        if port not in (sport, dport):
            continue
        payload = ip[ihl + 8:ihl + ulen]
        size = ulen + 20  # UDP + IPv4 header, as the nft counters count
        try:
            m, _ = bdec(payload)
            y = m.get(b"y", b"?").decode(errors="replace")
            t = m.get(b"t", b"")
        except (ValueError, IndexError, AttributeError):
            stats["undecodable"][0] += 1
            stats["undecodable"][1] += size
            continue
        if y == "q":
            q = m.get(b"q", b"?").decode(errors="replace")
            kind = f"query {q}"
            pending[(src, sport, dst, dport, t)] = q
            if len(pending) > 200000:
                pending.clear()
        else:
            q = pending.pop((dst, dport, src, sport, t), "?")
            kind = f"{'answer' if y == 'r' else 'error'} {q}"
            r = m.get(b"r") or {}
            if isinstance(r, dict) and b"values" in r:
                values[0] += 1
                values[1] += len(r[b"values"])
        stats[kind][0] += 1
        stats[kind][1] += size
    total = [sum(v[0] for v in stats.values()), sum(v[1] for v in stats.values())]
    with open(out, "w") as fh:
        json.dump({"seconds": time.monotonic() - t0, "total_packets": total[0],
                   "total_bytes": total[1],
                   "by_kind": {k: {"packets": v[0], "bytes": v[1]}
                               for k, v in sorted(stats.items(), key=lambda kv: -kv[1][1])},
                   "get_peers_answers_with_values": values[0],
                   "peers_in_values": values[1]}, fh, indent=1)


if __name__ == "__main__":
    main()
