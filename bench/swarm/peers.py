#!/usr/bin/python3
"""Scripted BitTorrent peers for the RSS benchmark (bench/swarm/run.sh, 4).

    peers.py HOST PORT INFO_HASH_HEX FILES N FIRST_IP SECONDS

N peers, peer i from 127.0.0.(FIRST_IP + i), each: the BitTorrent handshake
(reserved: extension protocol 0x10 in byte 5, fast 0x04 in byte 7),
HAVE_NONE, the extended handshake {"debtorrent":1, "m":{"ut_pex":1,
"dt_wip":2}, "p":port, "v":"bench"}, INTERESTED, then a keep-alive every
30 s. They trade a little: once unchoked, a peer requests 16 KiB blocks of
pieces the daemon has (FILES gives the piece sizes, in piece order), with at
most 4 outstanding, and discards them. Every peer reads all it is sent.
Stops after SECONDS. Prints "peers up=U failed=F blocks=B" every 2 s to
stderr and a final line on stdout.
"""
import asyncio
import struct
import sys
import time

BLOCK = 16384


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


class Stats:
    up = 0
    failed = 0
    closed = 0
    blocks = 0
    errors = {}


def frame(mid, payload=b""):
    return struct.pack(">IB", 1 + len(payload), mid) + payload


async def peer(i, host, port, ih, sizes, src_ip, deadline):
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(src_ip, 0)), 10
        )
    except Exception as e:  # noqa: BLE001
        Stats.failed += 1
        Stats.errors[type(e).__name__] = Stats.errors.get(type(e).__name__, 0) + 1
        return
    pid = b"-BN0001-" + b"%012d" % i
    reserved = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    w.write(b"\x13BitTorrent protocol" + reserved + ih + pid)
    w.write(frame(15))  # HAVE_NONE
    ext = benc({"debtorrent": 1, "m": {"ut_pex": 1, "dt_wip": 2}, "p": 1, "v": "bench"})
    w.write(frame(20, b"\x00" + ext))
    w.write(frame(2))  # INTERESTED
    counted = False
    try:
        hs = await asyncio.wait_for(r.readexactly(68), 10)
        if hs[28:48] != ih:
            raise ConnectionError("other info hash")
        Stats.up += 1
        counted = True
        have = set()
        have_all = False
        unchoked = False
        outstanding = 0
        nxt = [0, 0]  # piece, begin
        last_ka = time.monotonic()

        def ask():
            nonlocal outstanding
            pieces = sorted(range(len(sizes))) if have_all else sorted(have)
            if not pieces:
                return
            while outstanding < 4:
                p, b = nxt
                if p not in (pieces if not have_all else range(len(sizes))):
                    p = pieces[0]
                    b = 0
                ln = min(BLOCK, sizes[p] - b)
                w.write(frame(6, struct.pack(">III", p, b, ln)))
                outstanding += 1
                b += ln
                if b >= sizes[p]:
                    later = [q for q in pieces if q > p]
                    p, b = (later[0] if later else pieces[0]), 0
                nxt[0], nxt[1] = p, b

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
                ask()
            elif mid == 0:
                unchoked = False
                outstanding = 0
            elif mid == 4:
                have.add(struct.unpack(">I", body[1:5])[0])
            elif mid == 5:
                bits = body[1:]
                have.update(
                    k for k in range(len(sizes)) if bits[k // 8] & (0x80 >> (k % 8))
                )
            elif mid == 14:
                have_all = True
            elif mid == 7:
                Stats.blocks += 1
                outstanding = max(0, outstanding - 1)
            elif mid == 16:
                outstanding = max(0, outstanding - 1)
            if unchoked:
                ask()
            await w.drain()
    except Exception as e:  # noqa: BLE001
        Stats.errors[type(e).__name__] = Stats.errors.get(type(e).__name__, 0) + 1
    finally:
        if counted:
            Stats.up -= 1
            Stats.closed += 1
        else:
            Stats.failed += 1
        w.close()


async def main():
    host, port, ihx, files, n, first, secs = sys.argv[1:8]
    ih = bytes.fromhex(ihx)
    sizes = [int(l.split()[1]) for l in open(files) if l.strip()]
    n, first, secs = int(n), int(first), float(secs)
    deadline = time.monotonic() + secs
    tasks = [
        asyncio.create_task(peer(i, host, int(port), ih, sizes, f"127.0.0.{first + i}", deadline))
        for i in range(n)
    ]

    async def report():
        while True:
            await asyncio.sleep(2)
            print(f"peers up={Stats.up} failed={Stats.failed} closed={Stats.closed} "
                  f"blocks={Stats.blocks} errors={Stats.errors}", file=sys.stderr, flush=True)

    rep = asyncio.create_task(report())
    await asyncio.gather(*tasks)
    rep.cancel()
    print(f"peers done closed={Stats.closed} failed={Stats.failed} "
          f"blocks={Stats.blocks} errors={Stats.errors}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
