#!/usr/bin/python3
"""libtorrent peer for the interop tests: seed or download one torrent.

usage: lt_client.py seed|leech TORRENT SAVE_DIR LISTEN_PORT TIMEOUT_SECS

Only loopback: listens on 127.0.0.1, no DHT/LSD/UPnP/NAT-PMP. Prints
"tracker-reply N" for each tracker answer (N = peers received), and
"done" when a download completes. A leecher exits 0 when complete, 1 on
timeout; a seeder runs until killed or the timeout passes.
"""
import sys
import time

import libtorrent as lt

mode, torrent, save, port, timeout = sys.argv[1:6]
settings = {
    "listen_interfaces": "127.0.0.1:%s" % port,
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "allow_multiple_connections_per_ip": True,
    "announce_to_all_trackers": True,
    "announce_to_all_tiers": True,
    "alert_mask": lt.alert.category_t.status_notification
    | lt.alert.category_t.tracker_notification
    | lt.alert.category_t.error_notification,
}
ses = lt.session(settings)
params = lt.add_torrent_params()
params.ti = lt.torrent_info(torrent)
params.save_path = save
h = ses.add_torrent(params)
deadline = time.time() + float(timeout)
while time.time() < deadline:
    for a in ses.pop_alerts():
        if isinstance(a, lt.tracker_reply_alert):
            print("tracker-reply", a.num_peers, flush=True)
        elif isinstance(a, (lt.tracker_error_alert, lt.tracker_warning_alert)):
            print("tracker-problem", a.message(), flush=True)
    st = h.status()
    if mode == "leech" and st.is_seeding:
        print("done", flush=True)
        sys.exit(0)
    time.sleep(0.1)
if mode == "leech":
    print("timeout; state", h.status().state, "peers", h.status().num_peers, flush=True)
    sys.exit(1)
