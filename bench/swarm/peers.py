#!/usr/bin/python3
"""Scripted dt2 peers for the RSS benchmark (bench/swarm/run.sh, 4).

    peers.py HOST PORT SWARM_ID_HEX FILES N FIRST_IP SECONDS

N peers, peer i from 127.0.0.(FIRST_IP + i), each speaking dt2
(docs/torrent-format.md §7):
- the BitTorrent handshake with the dt2 swarm id as info hash (reserved:
  extension protocol 0x10 in byte 5, fast 0x04 in byte 7);
- HAVE_NONE (never BITFIELD, HAVE or HAVE_ALL: the daemon drops such
  peers);
- the extended handshake {"debtorrent": 2, "m": {"ut_pex": 1, "dt_wip": 2,
  "dt_hold": 3}, "p": 1, "v": "bench"}, then INTERESTED;
- once the daemon's extended handshake is in (it must say "debtorrent": 2
  and name its dt_hold id), an empty dt_hold of our own under its id: we
  hold nothing;
- the daemon's dt_hold messages (sent under our id 3): {"a": (4-byte
  big-endian number + 32-byte SHA-256)*, "d": 4-byte numbers*}, the
  daemon's own number for each file it holds (its Packages index
  included). FILES gives each SHA-256's size: "sha256 size" lines, or
  "name size sha256 path" lines (run.sh's <suite>.files); entries it lacks
  are counted (unknown_sha) and never requested;
- once unchoked, a peer requests 16 KiB blocks of the files the daemon
  announced, naming the daemon's numbers, at most 4 outstanding, and
  discards them. A keep-alive every 30 s. Every peer reads all it is sent.
A dt1 message from the daemon (BITFIELD, HAVE, HAVE_ALL), an extended
handshake without "debtorrent": 2, or a PIECE for a number the daemon did
not announce is counted under errors (ProtocolError) and ends that peer.
Stops after SECONDS. Prints "peers up=U failed=F closed=C informed=I hold=H
unknown_sha=X blocks=B errors={...}" every 2 s to stderr (I: peers that
learned at least one dt_hold entry; H: dt_hold entries the live peers
hold, summed; X: entries whose SHA-256 FILES lacks) and a final line on
stdout.
"""
import asyncio
import struct
import sys
import time

BLOCK = 16384
OUR_HOLD_ID = 3


class ProtocolError(Exception):
    pass


def benc(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, dict):
        return b"d" + b"".join(benc(k) + benc(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)


def bdec(b, i=0):
    """(value, next index); dict keys and strings stay bytes."""
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1 : j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while b[i : i + 1] != b"e":
            v, i = bdec(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while b[i : i + 1] != b"e":
            k, i = bdec(b, i)
            v, i = bdec(b, i)
            out[k] = v
        return out, i + 1
    if c.isdigit():
        j = b.index(b":", i)
        n = int(b[i:j])
        if j + 1 + n > len(b):
            raise ProtocolError("short bencode string")
        return b[j + 1 : j + 1 + n], j + 1 + n
    raise ProtocolError("bad bencode")


def bdecode(b):
    try:
        v, i = bdec(b)
    except (ValueError, IndexError) as e:
        raise ProtocolError(f"bad bencode: {e}") from e
    if i != len(b):
        raise ProtocolError("trailing bytes after bencode")
    return v


class Stats:
    up = 0
    failed = 0
    closed = 0
    blocks = 0
    hold = 0  # dt_hold entries learned (adds minus drops), over all peers
    unknown = 0  # dt_hold entries whose SHA-256 is not in FILES
    informed = 0  # peers that learned at least one dt_hold entry
    unknown_shas = set()  # those SHA-256s (the first few)
    errors = {}


def err(e):
    k = type(e).__name__ if not isinstance(e, ProtocolError) else f"ProtocolError({e})"
    Stats.errors[k] = Stats.errors.get(k, 0) + 1


def frame(mid, payload=b""):
    return struct.pack(">IB", 1 + len(payload), mid) + payload


async def peer(i, host, port, sid, size_of, src_ip, deadline):
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(src_ip, 0)), 10
        )
    except Exception as e:  # noqa: BLE001
        Stats.failed += 1
        err(e)
        return
    pid = b"-BN0002-" + b"%012d" % i
    reserved = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    w.write(b"\x13BitTorrent protocol" + reserved + sid + pid)
    w.write(frame(15))  # HAVE_NONE
    ext = benc(
        {
            "debtorrent": 2,
            "m": {"ut_pex": 1, "dt_wip": 2, "dt_hold": OUR_HOLD_ID},
            "p": 1,
            "v": "bench",
        }
    )
    w.write(frame(20, b"\x00" + ext))
    w.write(frame(2))  # INTERESTED
    counted = False
    held = {}  # the daemon's number -> size
    try:
        hs = await asyncio.wait_for(r.readexactly(68), 10)
        if hs[28:48] != sid:
            raise ProtocolError("other swarm id")
        Stats.up += 1
        counted = True
        ext_seen = False
        informed = False
        unchoked = False
        outstanding = set()  # (number, begin)
        nxt = [None, 0]  # number, begin
        last_ka = time.monotonic()

        def ask():
            if not held:
                return
            nums = sorted(held)
            while len(outstanding) < 4:
                n, b = nxt
                if n not in held or b >= held[n]:
                    n, b = nums[0], 0
                ln = min(BLOCK, held[n] - b)
                if (n, b) in outstanding:
                    return
                w.write(frame(6, struct.pack(">III", n, b, ln)))
                outstanding.add((n, b))
                b += ln
                if b >= held[n]:
                    later = [q for q in nums if q > n]
                    n, b = (later[0] if later else nums[0]), 0
                nxt[0], nxt[1] = n, b

        while time.monotonic() < deadline:
            if time.monotonic() - last_ka > 30:
                w.write(b"\x00\x00\x00\x00")
                last_ka = time.monotonic()
            try:
                hdr = await asyncio.wait_for(r.readexactly(4), 5)
            except asyncio.TimeoutError:
                continue
            (n,) = struct.unpack(">I", hdr)
            if n == 0:
                continue
            body = await asyncio.wait_for(r.readexactly(n), 30)
            mid = body[0]
            if mid == 1:
                unchoked = True
            elif mid == 0:
                unchoked = False
                outstanding.clear()
            elif mid in (4, 5, 14):
                raise ProtocolError(f"dt1 message id {mid}")
            elif mid == 7:
                num, begin = struct.unpack(">II", body[1:9])
                if num not in held and (num, begin) not in outstanding:
                    raise ProtocolError("PIECE for a number not announced")
                Stats.blocks += 1
                outstanding.discard((num, begin))
            elif mid == 16:
                num, begin = struct.unpack(">II", body[1:9])
                outstanding.discard((num, begin))
            elif mid == 20 and len(body) >= 2:
                eid = body[1]
                if eid == 0:
                    h = bdecode(body[2:])
                    if not isinstance(h, dict) or h.get(b"debtorrent") != 2:
                        raise ProtocolError("daemon's extended handshake lacks debtorrent: 2")
                    their_hold = (h.get(b"m") or {}).get(b"dt_hold")
                    if not isinstance(their_hold, int) or not 1 <= their_hold <= 255:
                        raise ProtocolError("daemon's extended handshake lacks dt_hold")
                    if not ext_seen:
                        ext_seen = True
                        w.write(frame(20, bytes([their_hold]) + benc({"a": b"", "d": b""})))
                elif eid == OUR_HOLD_ID:
                    d = bdecode(body[2:])
                    a = d.get(b"a", b"") if isinstance(d, dict) else None
                    dr = d.get(b"d", b"") if isinstance(d, dict) else None
                    if not isinstance(a, bytes) or not isinstance(dr, bytes) \
                            or len(a) % 36 or len(dr) % 4:
                        raise ProtocolError("bad dt_hold")
                    for k in range(0, len(a), 36):
                        (num,) = struct.unpack(">I", a[k : k + 4])
                        size = size_of.get(a[k + 4 : k + 36])
                        if size is None:
                            Stats.unknown += 1
                            if len(Stats.unknown_shas) < 3:
                                Stats.unknown_shas.add((num, a[k + 4 : k + 36].hex()))
                        elif num not in held:
                            if not held and not informed:
                                informed = True
                                Stats.informed += 1
                            held[num] = size
                            Stats.hold += 1
                    for k in range(0, len(dr), 4):
                        (num,) = struct.unpack(">I", dr[k : k + 4])
                        if held.pop(num, None) is not None:
                            Stats.hold -= 1
            if unchoked:
                ask()
            await w.drain()
    except Exception as e:  # noqa: BLE001
        err(e)
    finally:
        Stats.hold -= len(held)
        if counted:
            Stats.up -= 1
            Stats.closed += 1
        else:
            Stats.failed += 1
        w.close()


def line():
    return (f"up={Stats.up} failed={Stats.failed} closed={Stats.closed} "
            f"informed={Stats.informed} hold={Stats.hold} "
            f"unknown_sha={Stats.unknown} blocks={Stats.blocks} errors={Stats.errors}"
            + (f" unknown={sorted(Stats.unknown_shas)}" if Stats.unknown_shas else ""))


async def main():
    host, port, sidx, files, n, first, secs = sys.argv[1:8]
    sid = bytes.fromhex(sidx)
    if len(sid) != 20:
        raise SystemExit("peers.py: the swarm id is 40 hex digits")
    size_of = {}
    for ln in open(files):
        f = ln.split()
        if len(f) == 2:  # sha256 size
            size_of[bytes.fromhex(f[0])] = int(f[1])
        elif len(f) >= 3:  # name size sha256 path
            size_of[bytes.fromhex(f[2])] = int(f[1])
    n, first, secs = int(n), int(first), float(secs)
    deadline = time.monotonic() + secs
    tasks = [
        asyncio.create_task(peer(i, host, int(port), sid, size_of, f"127.0.0.{first + i}", deadline))
        for i in range(n)
    ]

    async def report():
        while True:
            await asyncio.sleep(2)
            print(f"peers {line()}", file=sys.stderr, flush=True)

    rep = asyncio.create_task(report())
    await asyncio.gather(*tasks)
    rep.cancel()
    print(f"peers done {line()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
