#!/usr/bin/python3
"""Two python3-libtorrent DHT nodes for tests/e2e/interop.rs.

usage: lt_dht.py IP0 IP1 TIMEOUT_SECS

Starts lt0 on IP0 and lt1 on IP1, each on a port free for both TCP and UDP,
both bootstrapping from lt0 (docs/swarm-design.md §2 I1/I3 and §14: a
libtorrent node must bootstrap from a libtorrent node, since mainline drops
queries with libtorrent's 2-byte transaction ids). Loopback only: no LSD,
UPnP, NAT-PMP, and the bootstrap list is set before the DHT starts, so the
public routers are never tried.

Commands, one per line on stdin (N is a session number, IH 40 hex digits):
  start IP BOOT   start one more session on IP that bootstraps only from
                  BOOT (IP:PORT, e.g. a debtorrent node); it gets the next
                  number (2, 3, ...) and is reported by a "started" event
  nodes N         report session N's DHT routing table size ("nodes" event)
  lookup N IH     dht_get_peers on session N; replies come as "peers" events
  announce N IH   add the magnet torrent of IH on session N (it then
                  announces IH every dht_announce_interval seconds)
  quit

Events, one JSON object per line on stdout:
  {"event": "ready", "lt0": "IP:PORT", "lt1": "IP:PORT"}
  {"event": "peers", "session": N, "info_hash": IH, "peers": ["IP:PORT", ...]}
  {"event": "incoming_announce", "session": N, "info_hash": IH, "from": "IP:PORT"}
  {"event": "added", "session": N, "info_hash": IH}
  {"event": "started", "session": N, "addr": "IP:PORT"}
  {"event": "nodes", "session": N, "nodes": K}
  {"event": "log", "session": N, "what": "..."}     (errors, peer events)
  {"event": "error", "what": "..."}                 (bad command)

Exits on "quit", at end of stdin, or after TIMEOUT_SECS.
"""
import json
import queue
import socket
import sys
import tempfile
import threading
import time

import libtorrent as lt


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def free_port(ip):
    """A port free on IP for both TCP and UDP (the DHT uses the same port)."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((ip, 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((ip, port))
        except OSError:
            t.close()
            u.close()
            continue
        t.close()
        u.close()
        return port
    raise RuntimeError("no port free for TCP and UDP on %s" % ip)


def settings(ip, port, boot):
    s = {
        "listen_interfaces": "%s:%d" % (ip, port),
        "outgoing_interfaces": ip,
        "enable_dht": True,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": boot,
        "dht_block_ratelimit": 100000,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_announce_interval": 5,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.dht_operation_notification
        | lt.alert.category_t.dht_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.error_notification
        | lt.alert.category_t.peer_notification
        | lt.alert.category_t.connect_notification,
    }
    if "dht_ignore_dark_internet" in lt.default_settings():
        s["dht_ignore_dark_internet"] = False
    return s


def addr(a):
    # endpoints come as (ip, port) tuples
    return "%s:%d" % (a[0], a[1])


def main():
    ip0, ip1, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.time() + timeout
    p0, p1 = free_port(ip0), free_port(ip1)
    boot = "%s:%d" % (ip0, p0)
    sessions = [
        lt.session(settings(ip0, p0, boot)),
        lt.session(settings(ip1, p1, boot)),
    ]
    save = tempfile.TemporaryDirectory(prefix="dt-e2e-lt.")
    handles = []

    # Wait for both sessions to listen (TCP and UDP) before reporting.
    listening = [set(), set()]
    start = time.time()
    while time.time() - start < 10 and not all(len(x) >= 2 for x in listening):
        for n, ses in enumerate(sessions):
            for a in ses.pop_alerts():
                if isinstance(a, lt.listen_succeeded_alert):
                    listening[n].add(int(a.socket_type))
                elif isinstance(a, lt.listen_failed_alert):
                    emit(event="log", session=n, what=a.message())
        time.sleep(0.05)
    emit(event="ready", lt0="%s:%d" % (ip0, sessions[0].listen_port()),
         lt1="%s:%d" % (ip1, sessions[1].listen_port()),
         listening=[sorted(x) for x in listening])

    cmds = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            cmds.put(line.strip())
        cmds.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()

    while time.time() < deadline:
        try:
            while True:
                c = cmds.get_nowait()
                if c is None or c == "quit":
                    return 0
                parts = c.split()
                if parts[:1] == ["start"] and len(parts) == 3:
                    ip, boot = parts[1], parts[2]
                    p = free_port(ip)
                    ses = lt.session(settings(ip, p, boot))
                    sessions.append(ses)
                    emit(event="started", session=len(sessions) - 1,
                         addr="%s:%d" % (ip, ses.listen_port()))
                    continue
                if parts[:1] == ["nodes"] and len(parts) == 2 and parts[1].isdigit() \
                        and int(parts[1]) < len(sessions):
                    n = int(parts[1])
                    emit(event="nodes", session=n, nodes=sessions[n].status().dht_nodes)
                    continue
                try:
                    op, n, ih = parts[0], int(parts[1]), parts[2]
                    if len(ih) != 40 or not 0 <= n < len(sessions):
                        raise ValueError("want: lookup|announce N <40 hex digits>")
                    h = lt.sha1_hash(bytes.fromhex(ih))
                    if op == "lookup":
                        sessions[n].dht_get_peers(h)
                    elif op == "announce":
                        p = lt.parse_magnet_uri("magnet:?xt=urn:btih:%s" % ih)
                        p.save_path = save.name
                        handles.append(sessions[n].add_torrent(p))
                        emit(event="added", session=n, info_hash=ih)
                    else:
                        raise ValueError("unknown command")
                except (ValueError, IndexError) as e:
                    emit(event="error", what="%r: %s" % (c, e))
        except queue.Empty:
            pass
        for n, ses in enumerate(sessions):
            for a in ses.pop_alerts():
                if isinstance(a, lt.dht_get_peers_reply_alert):
                    emit(event="peers", session=n, info_hash=str(a.info_hash),
                         peers=[addr(x) for x in a.peers()])
                elif isinstance(a, lt.dht_announce_alert):
                    emit(event="incoming_announce", session=n,
                         info_hash=str(a.info_hash), **{"from": "%s:%d" % (a.ip, a.port)})
                elif isinstance(a, (lt.peer_connect_alert, lt.peer_disconnected_alert,
                                    lt.peer_error_alert, lt.torrent_error_alert,
                                    lt.listen_failed_alert,
                                    lt.dht_bootstrap_alert)):
                    emit(event="log", session=n, what=a.message())
        time.sleep(0.05)
    emit(event="log", session=-1, what="time limit reached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
