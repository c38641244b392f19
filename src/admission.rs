//! Who gets a connection slot on the apt front end, and who gives one up.
//!
//! The attack this answers (issue 16): hundreds of connections that each
//! send half a request head and then a byte every few seconds. With a
//! plain connection limit they take every slot and hold it, and apt (and
//! the status page) is refused. What we do instead, after nginx's
//! `client_header_timeout` (a deadline for the whole head, 408) and
//! `limit_conn` (per-address limits), and unlike apt-cacher-ng (which has
//! neither and relies on its thread pool):
//! - **A deadline for the whole request head** (`--request-head-timeout`,
//!   5 s), counted from its first byte, not reset by each byte: a slow
//!   head is answered 408 and closed (`http1.rs`).
//! - **A slot is earned by a complete request.** A new connection waits
//!   in an arrivals pool (as many places as `--max-connections`) until its
//!   first request head is complete. When the pool is full, the newcomer
//!   takes the place of the oldest arrival: apt sends its whole head at
//!   once and is gone from the pool within milliseconds, while an attacker
//!   that dribbles bytes is the oldest and goes first. Reconnecting in a
//!   loop does not help it: each reconnect is the newest arrival.
//! - **A full daemon evicts rather than refuses.** A connection with a
//!   complete request takes one of `--max-connections` slots; when they are
//!   full it takes the slot of the connection doing least (a later head in
//!   progress for longest, else the one idle longest between requests). A
//!   connection with a response in flight is never evicted (apt is being
//!   served). Only when every slot is serving apt is the new request
//!   answered 503.
//! - **Per source address** (`--max-connections-per-ip`, only when
//!   listening beyond loopback, where other machines reach us): a source at
//!   its limit evicts its own idlest connection, or is refused; it can
//!   never take other machines' places.
//! - **Slots kept for the status endpoints**: [`STATUS_SLOTS`] beyond the
//!   limit, for requests for `/`, `/status.json` or `/metrics` when every
//!   slot is serving apt.
//!
//! The policy ([`on_arrival`], [`on_request`]) is pure and table-tested;
//! [`Admission`] keeps the table and tells evicted connections to close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// Slots beyond `--max-connections` kept for the status endpoints.
pub const STATUS_SLOTS: usize = 8;
/// An arrival this young is not evicted: a burst of new connections must
/// not push out one whose complete head is on its way (apt sends it at
/// once; its reader may simply not have run yet). If every arrival is this
/// young, the newcomer is refused.
pub const GRACE_MS: u64 = 100;

/// What a connection is doing, for eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Arrived; its first request head is not complete yet.
    Arrival,
    /// Has a slot; waiting for its next request, nothing in flight.
    Idle,
    /// Has a slot; part of a later request head arrived, nothing in flight.
    Head,
    /// Has a slot; a response is being produced or sent.
    Busy,
}

/// One connection as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub id: u64,
    pub ip: IpAddr,
    pub phase: Phase,
    /// When it entered its phase (ms).
    pub since: u64,
    /// It holds one of the status slots.
    pub status_slot: bool,
}

/// The limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Slots, and places for arrivals.
    pub max: usize,
    /// Per source address (`None`: no limit, listening on loopback only).
    pub per_ip: Option<usize>,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Admit,
    /// Close connection `victim`, then go ahead.
    Evict(u64),
    /// Take a status slot (a request for a status page only).
    StatusSlot,
    /// No: close the new connection (at arrival), or answer 503.
    Refuse,
}

/// Among `cands`, the one doing least for anyone: the oldest arrival,
/// else the oldest head in progress, else the one idle longest.
fn victim<'a>(cands: impl Iterator<Item = &'a View>) -> Option<u64> {
    cands
        .filter(|v| v.phase != Phase::Busy)
        .min_by_key(|v| {
            let rank = match v.phase {
                Phase::Arrival => 0,
                Phase::Head => 1,
                _ => 2,
            };
            (rank, v.since, v.id)
        })
        .map(|v| v.id)
}

/// A new connection from `ip` at `now` (ms).
pub fn on_arrival(conns: &[View], ip: IpAddr, now: u64, lim: &Limits) -> Decision {
    if let Some(n) = lim.per_ip {
        let mine = || conns.iter().filter(|v| v.ip == ip);
        if mine().count() >= n {
            return match victim(mine()) {
                Some(id) => Decision::Evict(id),
                None => Decision::Refuse,
            };
        }
    }
    let arrivals = || conns.iter().filter(|v| v.phase == Phase::Arrival);
    if arrivals().count() < lim.max {
        return Decision::Admit;
    }
    match victim(arrivals().filter(|v| v.since + GRACE_MS <= now)) {
        Some(id) => Decision::Evict(id),
        None => Decision::Refuse,
    }
}

/// Arrival `me` completed its first request head (`status`: for a status
/// page): does it get a slot?
pub fn on_request(conns: &[View], me: u64, status: bool, lim: &Limits) -> Decision {
    let slotted = || {
        conns
            .iter()
            .filter(|v| v.id != me && v.phase != Phase::Arrival)
    };
    let regular = slotted().filter(|v| !v.status_slot).count();
    if regular < lim.max {
        return Decision::Admit;
    }
    if let Some(id) = victim(slotted()) {
        return Decision::Evict(id);
    }
    if status && slotted().filter(|v| v.status_slot).count() < STATUS_SLOTS {
        return Decision::StatusSlot;
    }
    Decision::Refuse
}

struct Entry {
    ip: IpAddr,
    since: u64,
    /// Earned a slot (a complete request).
    slotted: bool,
    status_slot: bool,
    /// Responses queued or being written.
    in_flight: usize,
    /// Part of a head is buffered.
    head: bool,
    kill: Arc<Notify>,
}

impl Entry {
    fn phase(&self) -> Phase {
        if !self.slotted {
            Phase::Arrival
        } else if self.in_flight > 0 {
            Phase::Busy
        } else if self.head {
            Phase::Head
        } else {
            Phase::Idle
        }
    }
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Entry>,
}

impl Table {
    fn views(&self) -> Vec<View> {
        self.conns
            .iter()
            .map(|(&id, e)| View {
                id,
                ip: e.ip,
                phase: e.phase(),
                since: e.since,
                status_slot: e.status_slot,
            })
            .collect()
    }

    fn evict(&mut self, victim: u64) {
        if let Some(v) = self.conns.remove(&victim) {
            tracing::debug!(peer = %v.ip, phase = ?v.phase(), "evicted to make room");
            v.kill.notify_one();
        }
    }
}

/// The front end's connection table.
pub struct Admission {
    lim: Limits,
    stats: Option<Arc<crate::stats::Stats>>,
    table: Mutex<Table>,
    epoch: Instant,
}

/// A connection's place: it reports what the connection does, and frees
/// the place when dropped. `kill` fires when the connection is evicted.
pub struct Ticket {
    id: u64,
    adm: Arc<Admission>,
    pub kill: Arc<Notify>,
}

impl Admission {
    pub fn new(lim: Limits, stats: Option<Arc<crate::stats::Stats>>) -> Arc<Admission> {
        Arc::new(Admission {
            lim,
            stats,
            table: Mutex::new(Table::default()),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn count(&self, f: fn(&crate::stats::Stats)) {
        if let Some(s) = &self.stats {
            f(s);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `ip`, evicting one if the policy
    /// says so; `None`: refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let now = self.now();
        let mut t = self.lock();
        match on_arrival(&t.views(), ip, now, &self.lim) {
            Decision::Admit | Decision::StatusSlot => {}
            Decision::Evict(victim) => {
                t.evict(victim);
                self.count(crate::stats::Stats::evicted);
            }
            Decision::Refuse => {
                self.count(crate::stats::Stats::refused);
                return None;
            }
        }
        t.next += 1;
        let id = t.next;
        let kill = Arc::new(Notify::new());
        t.conns.insert(
            id,
            Entry {
                ip,
                since: now,
                slotted: false,
                status_slot: false,
                in_flight: 0,
                head: false,
                kill: kill.clone(),
            },
        );
        Some(Ticket {
            id,
            adm: self.clone(),
            kill,
        })
    }

    /// Connections now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        let now = self.now();
        let mut t = self.lock();
        if let Some(e) = t.conns.get_mut(&id) {
            let before = e.phase();
            f(e);
            if e.phase() != before {
                e.since = now;
            }
        }
    }
}

impl Ticket {
    /// A request head is complete (`status`: for a status page). The
    /// first one earns the connection a slot, evicting another if need
    /// be; `false`: no slot (answer 503 and close).
    pub fn request(&self, status: bool) -> bool {
        let now = self.adm.now();
        let mut t = self.adm.lock();
        let slotted = match t.conns.get(&self.id) {
            Some(e) => e.slotted,
            None => return false, // evicted meanwhile
        };
        if !slotted {
            let status_slot = match on_request(&t.views(), self.id, status, &self.adm.lim) {
                Decision::Admit => false,
                Decision::Evict(victim) => {
                    t.evict(victim);
                    self.adm.count(crate::stats::Stats::evicted);
                    false
                }
                Decision::StatusSlot => true,
                Decision::Refuse => {
                    self.adm.count(crate::stats::Stats::refused);
                    return false;
                }
            };
            if let Some(e) = t.conns.get_mut(&self.id) {
                e.slotted = true;
                e.status_slot = status_slot;
            }
        }
        if let Some(e) = t.conns.get_mut(&self.id) {
            e.in_flight += 1;
            e.head = false;
            e.since = now;
        }
        true
    }

    /// Whether this connection holds a status slot (only status pages).
    pub fn status_only(&self) -> bool {
        self.adm
            .lock()
            .conns
            .get(&self.id)
            .is_some_and(|e| e.status_slot)
    }

    /// A request head missed its deadline.
    pub fn head_timed_out(&self) {
        self.adm.count(crate::stats::Stats::head_timeout);
    }

    /// Part of a request head is buffered (`true`), or none is.
    pub fn head(&self, partial: bool) {
        self.adm.update(self.id, |e| e.head = partial);
    }

    /// A response was written (or given up).
    pub fn response_done(&self) {
        self.adm
            .update(self.id, |e| e.in_flight = e.in_flight.saturating_sub(1));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.adm.lock().conns.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn v(id: u64, n: u8, phase: Phase, since: u64) -> View {
        View {
            id,
            ip: ip(n),
            phase,
            since,
            status_slot: false,
        }
    }

    #[test]
    fn arrivals() {
        use Phase::*;
        let lim = Limits {
            max: 2,
            per_ip: None,
        };
        let per_ip = Limits {
            max: 10,
            per_ip: Some(2),
        };
        let cases: Vec<(&str, Vec<View>, u8, Limits, Decision)> = vec![
            (
                "room among the arrivals (slotted ones do not count)",
                vec![v(1, 1, Arrival, 0), v(2, 2, Busy, 0), v(3, 3, Idle, 0)],
                4,
                lim,
                Decision::Admit,
            ),
            (
                "arrivals full: the oldest arrival makes room",
                vec![v(1, 1, Arrival, 50), v(2, 2, Arrival, 10), v(3, 3, Idle, 0)],
                4,
                lim,
                Decision::Evict(2),
            ),
            (
                "arrivals full and all within their grace: refused",
                vec![v(1, 1, Arrival, 950), v(2, 2, Arrival, 920)],
                4,
                lim,
                Decision::Refuse,
            ),
            (
                "an address at its limit evicts its own, not others'",
                vec![v(1, 5, Busy, 0), v(2, 6, Arrival, 0), v(3, 5, Idle, 10)],
                5,
                per_ip,
                Decision::Evict(3),
            ),
            (
                "an address at its limit with everything in flight: refused",
                vec![v(1, 5, Busy, 0), v(2, 5, Busy, 0), v(3, 6, Idle, 0)],
                5,
                per_ip,
                Decision::Refuse,
            ),
            (
                "another address is still admitted",
                vec![v(1, 5, Busy, 0), v(2, 5, Busy, 0)],
                6,
                per_ip,
                Decision::Admit,
            ),
        ];
        for (name, conns, from, lim, want) in cases {
            assert_eq!(on_arrival(&conns, ip(from), 1000, &lim), want, "{name}");
        }
    }

    #[test]
    fn requests() {
        use Phase::*;
        let lim = Limits {
            max: 2,
            per_ip: None,
        };
        let status = |id| View {
            status_slot: true,
            ..v(id, 9, Busy, 0)
        };
        let me = v(100, 1, Arrival, 5);
        let cases: Vec<(&str, Vec<View>, bool, Decision)> = vec![
            (
                "a free slot",
                vec![v(1, 1, Busy, 0)],
                false,
                Decision::Admit,
            ),
            (
                "full: a slow later head goes before an older idle one",
                vec![v(1, 1, Idle, 0), v(2, 2, Head, 50)],
                false,
                Decision::Evict(2),
            ),
            (
                "full, no head: the longest idle",
                vec![v(1, 1, Idle, 70), v(2, 2, Idle, 20), v(3, 3, Busy, 0)],
                false,
                Decision::Evict(2),
            ),
            (
                "arrivals are not slot holders",
                vec![v(1, 1, Busy, 0), v(2, 2, Arrival, 0)],
                false,
                Decision::Admit,
            ),
            (
                "every slot serving apt: apt's request gets 503",
                vec![v(1, 1, Busy, 0), v(2, 2, Busy, 0)],
                false,
                Decision::Refuse,
            ),
            (
                "... and a status request a status slot",
                vec![v(1, 1, Busy, 0), v(2, 2, Busy, 0), status(3)],
                true,
                Decision::StatusSlot,
            ),
            (
                "status slots full too",
                {
                    let mut c = vec![v(1, 1, Busy, 0), v(2, 2, Busy, 0)];
                    c.extend((0..STATUS_SLOTS as u64).map(|i| status(10 + i)));
                    c
                },
                true,
                Decision::Refuse,
            ),
        ];
        for (name, mut conns, st, want) in cases {
            conns.push(me);
            assert_eq!(on_request(&conns, me.id, st, &lim), want, "{name}");
        }
    }

    #[test]
    fn the_table_evicts_and_frees() {
        let adm = Admission::new(
            Limits {
                max: 1,
                per_ip: None,
            },
            None,
        );
        let a = adm.admit(ip(1)).expect("room");
        // Arrivals full and a within its grace: refused.
        assert!(adm.admit(ip(2)).is_none());
        // Arrivals full: b takes a's place (a never sent a whole head).
        std::thread::sleep(std::time::Duration::from_millis(GRACE_MS + 10));
        let b = adm.admit(ip(2)).expect("evicts a");
        assert!(fired(&a.kill), "a was told to close");
        drop(a);
        assert_eq!(adm.len(), 1);
        assert!(b.request(false), "b gets the free slot");
        let c = adm.admit(ip(3)).expect("arrivals have room again");
        // The one slot serves b: c's apt request is refused, its status
        // request gets a status slot.
        assert!(!c.request(false));
        assert!(c.request(true));
        assert!(c.status_only());
        b.response_done();
        // b idle now: d's request evicts it.
        let d = adm.admit(ip(4)).expect("room");
        assert!(d.request(false));
        assert!(fired(&b.kill), "b was told to close");
        drop((b, c, d));
        assert_eq!(adm.len(), 0);
    }

    /// Whether the notification fired (polled once).
    fn fired(n: &Notify) -> bool {
        let f = n.notified();
        tokio::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::future::Future::poll(f.as_mut(), &mut cx).is_ready()
    }
}
