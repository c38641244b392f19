#!/usr/bin/python3
"""Delay and loss for the packets entering one network namespace, for
bench/chaos/run.sh on kernels without sch_netem (`tc qdisc ... netem`
answers "Specified qdisc kind is unknown").

    linkdelay.py QUEUE DELAY_MS LOSS_PCT SEED

Run inside the namespace, with an iptables rule that hands the packets to
NFQUEUE QUEUE, e.g. `iptables -A INPUT -i eth0 -j NFQUEUE --queue-num 0
--queue-bypass`. Each queued packet is dropped with probability
LOSS_PCT/100 at once (a DROP verdict), else accepted DELAY_MS after it
arrived: what `netem delay DELAY_MS loss LOSS_PCT%` does on that link.

Plain nfnetlink_queue over a raw netlink socket (no library): copy mode
META (no payload is copied to user space), fail-open (a full queue lets
packets through rather than dropping them), and accepts go out as batch
verdicts (every queued id <= N), so the cost is one recv per packet and
one send per 1 ms of released packets. Without the rule, or with the
process gone, `--queue-bypass` lets packets through unchanged.
"""
import collections
import errno
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP, NF_ACCEPT = 0, 1


def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def nlmsg(mtype, flags, seq, queue, attrs):
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype, flags, seq, 0) + body


def main():
    queue, delay, loss, seed = int(sys.argv[1]), float(sys.argv[2]) / 1000.0, float(sys.argv[3]) / 100.0, int(sys.argv[4])
    rng = random.Random(seed)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    cfg = (
        attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
        + attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
        + attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536))
        + attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
        + attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
    )
    s.send(nlmsg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 1, queue, cfg))
    ack = s.recv(65536)
    if len(ack) >= 20 and struct.unpack_from("=H", ack, 4)[0] == NLMSG_ERROR:
        err = struct.unpack_from("=i", ack, 16)[0]
        if err != 0:
            raise SystemExit(f"linkdelay: cannot bind queue {queue}: {os.strerror(-err)}")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    pending = collections.deque()  # (due, packet id), in arrival order (ids increase)
    seen = dropped = 0
    t_report = time.monotonic()
    buf = bytearray(1 << 18)
    while not stop:
        now = time.monotonic()
        timeout = max(0.0, pending[0][0] - now) if pending else 1.0
        try:
            r, _, _ = select.select([s], [], [], timeout)
        except InterruptedError:
            continue
        if r:
            try:
                n = s.recv_into(buf)
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EINTR, errno.EAGAIN):
                    continue
                raise
            now = time.monotonic()
            off = 0
            mv = memoryview(buf)
            while off + 16 <= n:
                ln, typ = struct.unpack_from("=IH", buf, off)
                if ln < 16:
                    break
                if typ == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    a = off + 20
                    end = off + ln
                    while a + 4 <= end:
                        alen, atyp = struct.unpack_from("=HH", buf, a)
                        if alen < 4:
                            break
                        if (atyp & 0x7FFF) == NFQA_PACKET_HDR:
                            pid = struct.unpack_from("!I", buf, a + 4)[0]
                            seen += 1
                            if rng.random() < loss:
                                dropped += 1
                                s.send(nlmsg(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue,
                                             attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_DROP, pid))))
                            else:
                                pending.append((now + delay, pid))
                            break
                        a += (alen + 3) & ~3
                off += (ln + 3) & ~3
            del mv
        now = time.monotonic()
        last = None
        while pending and pending[0][0] <= now + 0.0005:
            last = pending.popleft()[1]
        if last is not None:
            s.send(nlmsg(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, queue,
                         attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))))
        if now - t_report >= 30:
            print(f"linkdelay: {seen} packets, {dropped} dropped, {len(pending)} pending", flush=True)
            t_report = now
    if pending:
        s.send(nlmsg(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, 0, queue,
                     attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pending[-1][1]))))
    print(f"linkdelay: {seen} packets, {dropped} dropped (end)", flush=True)


if __name__ == "__main__":
    main()
