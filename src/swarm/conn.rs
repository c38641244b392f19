//! One peer connection: the handshakes, then a reader task and a writer
//! task around the pure codec (`wire.rs`).
//!
//! The reader decodes frames, checks every one against the limits and the
//! torrent's piece lengths, writes block data straight into the piece's
//! assembly (`assembly::Download::put`, which verifies) and tells the torrent
//! task what happened, never handing it the data. The writer sends what the
//! torrent task asks for and serves the peer's requests from the store,
//! or, for content our `dt_wip` named (we fetch it from the mirror now),
//! from its assembly as the mirror's bytes arrive (the relay of
//! `docs/torrent-format.md` §7.7). The receiver verifies those against its
//! own index before any of it reaches its apt, store or peers; nothing a
//! peer sent us is relayed before it is verified (an assembly fed by a
//! peer is never offered).
//!
//! Two tasks rather than one `select!` loop: a peer that stops reading must
//! not stop us from reading its blocks (both sides blocked in a write would
//! deadlock).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::catalogue::Catalogue;
use super::rate::TokenBucket;
use super::wire::{self, BlockRef, ExtHandshake, Handshake, Msg};
use crate::assembly::Download;
use crate::store::Store;
use crate::types::{InfoHash, PeerKey, PieceIndex, Source, BLOCK};

/// What a torrent's connections tell its task. The connection tasks own
/// this vocabulary; the torrent task turns it into state machine inputs.
pub enum Event {
    /// A connection finished both handshakes; the bitfield (in our
    /// numbers) of what our `dt_hold` told it we hold.
    Up(Box<Established>, Vec<u8>),
    /// A dial or a handshake failed.
    Failed(SocketAddr),
    /// The connection ended; `violation` when the peer broke the protocol.
    Down {
        key: PeerKey,
        addr: SocketAddr,
        violation: bool,
    },
    /// It choked (or unchoked) us; `discarded` when that dropped our
    /// requests (BEP 3; BEP 6 peers reject them one by one instead).
    Choked {
        key: PeerKey,
        choked: bool,
        discarded: bool,
    },
    Interest {
        key: PeerKey,
        interested: bool,
    },
    /// Its `dt_hold`: content it holds now (with its numbers) and numbers
    /// it dropped.
    Hold {
        key: PeerKey,
        hold: wire::Hold,
    },
    /// A block could not be written into our piece's assembly (a full
    /// disk).
    WriteFailed {
        piece: PieceIndex,
    },
    /// A REJECT of one of our requests (`req.index` is our number).
    Rejected {
        key: PeerKey,
        req: BlockRef,
    },
    /// A block we asked for was written into its assembly; `new` bytes of
    /// it were not there yet; `id` is the assembly (`Download::id`) and
    /// `gen` its generation before the write; `piece` is our number.
    Block {
        key: PeerKey,
        piece: PieceIndex,
        begin: u32,
        len: u32,
        new: u64,
        id: u64,
        gen: u64,
    },
    Pex {
        added: Vec<SocketAddr>,
    },
    Wip {
        key: PeerKey,
        wip: wire::Wip,
    },
    /// Its `dt_who`: a query to answer, or an answer to ours.
    Who {
        key: PeerKey,
        who: wire::Who,
    },
}

/// What the connections of one swarm share.
pub struct Context {
    /// The dt2 swarm id (what handshakes carry).
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub listen_port: u16,
    /// What our numbers (what peers request) stand for.
    pub cat: Arc<RwLock<Catalogue>>,
    /// The index versions registered in this swarm now (our `dt_idx`).
    pub versions: Mutex<Vec<InfoHash>>,
    pub store: Arc<Store>,
    pub events: mpsc::Sender<Event>,
    pub upload_limit: Arc<Mutex<TokenBucket>>,
    /// Bytes uploaded to this torrent's peers.
    pub uploaded: AtomicU64,
    /// What we fetch from the mirror now and offer as it arrives (our
    /// number -> its assembly): only assemblies that no peer fed.
    pub relay: Mutex<HashMap<u32, Arc<Download>>>,
    epoch: Instant,
}

/// Where a block to upload stands.
enum Block {
    /// Read: this many bytes.
    Ready(usize),
    /// Relayed content whose bytes have not arrived yet.
    Later,
    /// Not ours to serve (any more).
    Gone,
}

impl Context {
    /// The context of one swarm's connections.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        info_hash: InfoHash,
        cat: Arc<RwLock<Catalogue>>,
        peer_id: [u8; 20],
        listen_port: u16,
        store: Arc<Store>,
        events: mpsc::Sender<Event>,
        upload_limit: Arc<Mutex<TokenBucket>>,
    ) -> Context {
        Context {
            info_hash,
            peer_id,
            listen_port,
            cat,
            versions: Mutex::new(Vec::new()),
            store,
            events,
            upload_limit,
            uploaded: AtomicU64::new(0),
            relay: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cat(&self) -> std::sync::RwLockReadGuard<'_, Catalogue> {
        self.cat.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request lies inside its piece (at most 16 KiB, and
    /// `begin + length` within the content's size).
    pub fn valid_block(&self, r: BlockRef) -> bool {
        let Some(size) = self.cat().get(r.index).map(|e| e.size) else {
            return false;
        };
        r.length > 0 && r.length <= BLOCK && u64::from(r.begin) + u64::from(r.length) <= size
    }

    /// Reads a block for upload: from the store, or from the assembly of
    /// content we relay (once the mirror's bytes for it are in).
    fn read_block(
        &self,
        r: BlockRef,
        file: &mut Option<(u32, std::fs::File)>,
        buf: &mut [u8],
    ) -> Block {
        if !self.open_stored(r.index, file) {
            return self.read_relayed(r, buf);
        }
        match read_stored(r, file, buf) {
            Some(n) => Block::Ready(n),
            None => Block::Gone,
        }
    }

    /// Whether `file` is (now) the stored file of piece `index`, found by
    /// content, wherever the store keeps it now.
    fn open_stored(&self, index: u32, file: &mut Option<(u32, std::fs::File)>) -> bool {
        if file.as_ref().is_some_and(|(i, _)| *i == index) {
            return true;
        }
        let stored = self.cat().get(index).and_then(|e| {
            let (rel, _) = self.store.find(&e.sha256)?;
            std::fs::File::open(self.store.piece_path(&rel)).ok()
        });
        match stored {
            Some(f) => {
                *file = Some((index, f));
                true
            }
            None => false,
        }
    }

    /// A block of content we fetch from the mirror now, if its bytes are
    /// in (the last byte only once the piece is verified).
    fn read_relayed(&self, r: BlockRef, buf: &mut [u8]) -> Block {
        let dl = {
            let relay = self.relay.lock().unwrap_or_else(|e| e.into_inner());
            relay.get(&r.index).cloned()
        };
        let Some(dl) = dl else {
            return Block::Gone;
        };
        let end = u64::from(r.begin) + u64::from(r.length);
        match dl.relayable() {
            None => Block::Gone,
            Some(upto) if upto < end => Block::Later,
            Some(_) => {
                let n = r.length as usize;
                let Some(b) = buf.get_mut(..n) else {
                    return Block::Gone;
                };
                match dl.read_at(b, u64::from(r.begin)) {
                    Ok(()) => Block::Ready(n),
                    Err(_) => Block::Gone,
                }
            }
        }
    }
}

/// Dials `addr` (from our own address `bind`, so peers see the IP we
/// listen on) and runs both handshakes in a task of its own; the result
/// reaches the torrent task as [`Event::Up`] or [`Event::Failed`].
pub fn spawn_dial(
    ctx: Arc<Context>,
    addr: SocketAddr,
    bind: std::net::IpAddr,
    bits: Vec<u8>,
    hold: Vec<(u32, [u8; 32])>,
) {
    tokio::spawn(
        async move {
            let dial = async {
                let sock = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
                    sock.bind(SocketAddr::new(bind, 0))?;
                }
                sock.connect(addr).await
            };
            let res = match tokio::time::timeout(Duration::from_secs(5), dial).await {
                Ok(Ok(s)) => establish(s, addr, &ctx, None, hold)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_string()),
            };
            report(&ctx, addr, res, bits).await;
        }
        .in_current_span(),
    );
}

/// Runs both handshakes of an incoming connection (whose handshake the
/// listener read) in a task of its own; see [`spawn_dial`].
pub fn spawn_accept(
    ctx: Arc<Context>,
    stream: TcpStream,
    addr: SocketAddr,
    hs: Handshake,
    bits: Vec<u8>,
    hold: Vec<(u32, [u8; 32])>,
) {
    tokio::spawn(
        async move {
            let res = establish(stream, addr, &ctx, Some(hs), hold)
                .await
                .map_err(|e| e.to_string());
            report(&ctx, addr, res, bits).await;
        }
        .in_current_span(),
    );
}

async fn report(ctx: &Context, addr: SocketAddr, res: Result<Established, String>, bits: Vec<u8>) {
    let ev = match res {
        Ok(est) => Event::Up(Box::new(est), bits),
        Err(e) => {
            tracing::debug!(peer = %addr, error = %e, "cannot connect");
            Event::Failed(addr)
        }
    };
    let _ = ctx.events.send(ev).await;
}

/// Time allowed for both handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which a peer is dropped (it must send keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
const KEEPALIVE: Duration = Duration::from_secs(90);
/// The read buffer of a peer we await blocks from, and of one that only
/// sends control messages; the write buffer of an idle peer.
const READ_BIG: usize = 256 * 1024;
const READ_SMALL: usize = 16 * 1024;
const WRITE_IDLE: usize = 16 * 1024;
const WRITE_SHRINK_AFTER: Duration = Duration::from_secs(1);

/// Requests a peer may have queued at us; we advertise it as `reqq`. A
/// thousand 16 KiB blocks (16 MB) keep a fast LAN or loopback link busy:
/// 250 held the 1 GB benchmark near 475 MB/s, 1000 lifted it to 540.
pub const REQQ: usize = 1000;
/// Beyond this many queued requests the peer is dropped.
const REQQ_DROP: usize = 2000;
/// The ids we give our extensions in our extended handshake.
pub const OUR_PEX_ID: u8 = 1;
/// See [`OUR_PEX_ID`].
pub const OUR_WIP_ID: u8 = 2;
/// See [`OUR_PEX_ID`].
pub const OUR_HOLD_ID: u8 = 3;
/// See [`OUR_PEX_ID`].
pub const OUR_WHO_ID: u8 = 4;
/// A capability (`dt_relay`): never received as a message.
pub const OUR_RELAY_ID: u8 = 5;
/// How long a relayed request may wait for the mirror's bytes before it
/// is rejected.
const RELAY_WAIT: Duration = Duration::from_secs(20);
/// How often a writer with relayed requests waiting looks for their bytes.
const RELAY_POLL: Duration = Duration::from_millis(5);
/// Most entries a peer's `dt_hold` messages may add up to (36 bytes each,
/// 2.4 MB). A whole Debian suite's packages for one architecture are about
/// 64,000 files; a peer claiming more is lying or hostile.
pub const MAX_PEER_HOLD: usize = 65_536;
/// The decoder's limits in dt2: no piece count is shared, so a BITFIELD
/// (whose size would depend on one) can only be empty, and every other
/// piece number is checked against the catalogue or our requests.
const DT2_LIMITS: wire::Limits = wire::Limits { piece_count: 0 };

/// What the torrent task (and the reader) tell a connection's writer.
pub enum Out {
    /// Request these blocks (in the peer's numbers; registered as
    /// outstanding first) of our piece `ours`.
    Request(Vec<BlockRef>, Arc<Download>, PieceIndex),
    /// Cancel one of our requests (in the peer's numbers).
    Cancel(BlockRef),
    /// Cancel our requests for one piece (our number; it is over).
    CancelPiece(PieceIndex),
    /// Cancel every request of ours (the peer stalled).
    CancelAll,
    /// Our `dt_hold`: what we hold now, or no longer.
    Hold(wire::Hold),
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    /// An extended message with the peer's id for that extension.
    Extended(u8, Vec<u8>),
    /// The peer asked for a block (validated by the reader).
    Upload(BlockRef),
    /// The peer cancelled a request.
    CancelUpload(BlockRef),
    /// Our `dt_wip` (with the peer's id for it): what it names may be
    /// requested (relayed as it arrives).
    Wip(u8, wire::Wip),
    Close,
}

/// Our requests at a peer: (its number, begin) -> what it is for.
pub type Outstanding = HashMap<(u32, u32), Asked>;

/// One of our requests: its length, the assembly its block goes to, and
/// our number for the content.
pub struct Asked {
    pub len: u32,
    pub dl: Arc<Download>,
    pub ours: PieceIndex,
}

/// State shared by the reader, the writer and the torrent task.
#[derive(Default)]
pub struct PeerShared {
    /// Our requests at this peer.
    pub outstanding: Mutex<Outstanding>,
    /// Our numbers that our `dt_hold` messages named to this peer (what it
    /// may request; a number we dropped since is rejected, not a fault).
    announced: Mutex<HashSet<u32>>,
    /// Recently cancelled requests: a block may still arrive for them.
    cancelled: Mutex<VecDeque<((u32, u32), Instant)>>,
    /// We are choking the peer (no uploads).
    pub am_choking: AtomicBool,
    /// Bytes of blocks received from the peer.
    pub down: AtomicU64,
    /// Bytes of blocks sent to the peer.
    pub up: AtomicU64,
    /// Requests the peer has queued at us.
    queued: AtomicU64,
    /// The writer ended (the peer stopped reading, or we closed): the
    /// reader stops too, so the connection and its slot go.
    writer_done: tokio::sync::Notify,
}

impl PeerShared {
    fn new() -> Self {
        let s = PeerShared::default();
        s.am_choking.store(true, Ordering::Relaxed);
        s
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.announced.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a peer told us during the handshakes.
pub struct Hello {
    pub peer_id: [u8; 20],
    pub fast: bool,
    pub ext: ExtHandshake,
}

/// A connection that finished its handshakes.
pub struct Established {
    pub addr: SocketAddr,
    pub hello: Hello,
    pub shared: Arc<PeerShared>,
    pub tx: mpsc::Sender<Out>,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    rx: mpsc::Receiver<Out>,
    buf: BytesMut,
    /// We dialled it.
    pub outgoing: bool,
    /// Its id for `dt_hold`.
    hold_id: u8,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("wire: {0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

impl ConnError {
    /// Whether this counts against the peer (a violation), rather than an
    /// ordinary disconnect.
    pub fn is_violation(&self) -> bool {
        matches!(self, ConnError::Wire(_) | ConnError::Protocol(_))
    }
}

/// Reads the 68-byte handshake.
pub async fn read_handshake(s: &mut TcpStream) -> Result<Handshake, ConnError> {
    let mut b = [0u8; 68];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, s.read_exact(&mut b))
        .await
        .map_err(|_| ConnError::Timeout)??;
    Ok(Handshake::decode(&b)?)
}

/// Both handshakes; our holdings are queued for the writer. `theirs` is
/// the handshake already read (incoming connections: the listener read it
/// to find the swarm).
///
/// dt2 (`docs/torrent-format.md` §7): no BITFIELD, HAVE or HAVE_ALL, since
/// piece numbers are each peer's own; we send HAVE_NONE (BEP 6), the
/// extended handshake with `"debtorrent": 2` and `dt_hold`; once the
/// peer's extended handshake told us its id for `dt_hold`, what we hold
/// (`hold`, our numbers with their SHA-256) is queued for the writer in
/// messages of at most [`wire::MAX_HOLD`] entries.
pub async fn establish(
    mut s: TcpStream,
    addr: SocketAddr,
    sh: &Context,
    theirs: Option<Handshake>,
    hold: Vec<(u32, [u8; 32])>,
) -> Result<Established, ConnError> {
    let ours = Handshake::new(sh.info_hash, sh.peer_id);
    let fut = async {
        s.write_all(&ours.encode()).await?;
        let hs = match theirs {
            Some(h) => h,
            None => read_handshake(&mut s).await?,
        };
        if hs.info_hash != sh.info_hash {
            return Err(ConnError::Protocol("handshake for another swarm"));
        }
        if hs.peer_id == sh.peer_id {
            return Err(ConnError::Protocol("connected to ourselves"));
        }
        if !hs.extensions() {
            return Err(ConnError::Protocol("peer lacks the extension protocol"));
        }
        let mut out = BytesMut::new();
        if hs.fast() {
            wire::encode(&Msg::HaveNone, &mut out);
        }
        let ext = ExtHandshake {
            m: vec![
                (wire::EXT_PEX.to_string(), OUR_PEX_ID),
                (wire::EXT_WIP.to_string(), OUR_WIP_ID),
                (wire::EXT_HOLD.to_string(), OUR_HOLD_ID),
                (wire::EXT_WHO.to_string(), OUR_WHO_ID),
                (wire::EXT_RELAY.to_string(), OUR_RELAY_ID),
            ],
            p: Some(sh.listen_port),
            v: Some(concat!("debtorrent ", env!("CARGO_PKG_VERSION")).to_string()),
            reqq: Some(REQQ as u32),
            debtorrent: Some(wire::DT_VERSION),
            yourip: None,
            versions: sh.versions.lock().map(|v| v.clone()).unwrap_or_default(),
        };
        wire::encode(
            &Msg::Extended {
                id: wire::EXT_HANDSHAKE,
                payload: &ext.encode(),
            },
            &mut out,
        );
        s.write_all(&out).await?;
        // Their extended handshake (HAVE_NONE and unknown messages may
        // come first; anything naming pieces by number may not).
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut their_ext = None;
        while their_ext.is_none() {
            let consumed = loop {
                match wire::decode(&buf, &DT2_LIMITS)? {
                    Some((msg, used)) => {
                        match msg {
                            Msg::HaveNone => {}
                            Msg::Extended {
                                id: wire::EXT_HANDSHAKE,
                                payload,
                            } => their_ext = Some(ExtHandshake::decode(payload)?),
                            Msg::KeepAlive | Msg::Port(_) | Msg::Unknown { .. } => {}
                            Msg::Extended { .. } => {}
                            _ => {
                                return Err(ConnError::Protocol(
                                    "unexpected message before the extended handshake",
                                ))
                            }
                        }
                        break used;
                    }
                    None => {
                        if s.read_buf(&mut buf).await? == 0 {
                            return Err(ConnError::Protocol("closed during the handshake"));
                        }
                    }
                }
            };
            buf.advance(consumed);
        }
        let ext = their_ext.ok_or(ConnError::Protocol("no extended handshake"))?;
        if ext.debtorrent != Some(wire::DT_VERSION) {
            return Err(ConnError::Protocol(
                "not a dt2 debtorrent peer (no \"debtorrent\": 2)",
            ));
        }
        let hold_id = ext
            .ext_id(wire::EXT_HOLD)
            .ok_or(ConnError::Protocol("no dt_hold in the extended handshake"))?;
        Ok((hs, ext, buf, hold_id))
    };
    let (hs, ext, buf, hold_id) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| ConnError::Timeout)??;
    let _ = s.set_nodelay(true);
    let (read, write) = s.into_split();
    let (tx, rx) = mpsc::channel(1024);
    let shared = Arc::new(PeerShared::new());
    // What we hold goes out first thing from the writer, once both sides'
    // readers run: two peers that each hold thousands of files would
    // otherwise both block writing it before either reads. At most what a
    // peer accepts ([`MAX_PEER_HOLD`]).
    let mut hold = hold;
    hold.truncate(MAX_PEER_HOLD);
    for chunk in hold.chunks(wire::MAX_HOLD) {
        let h = wire::Hold {
            add: chunk.to_vec(),
            drop: Vec::new(),
        };
        let _ = tx.try_send(Out::Hold(h));
    }
    Ok(Established {
        addr,
        hello: Hello {
            peer_id: hs.peer_id,
            fast: hs.fast(),
            ext,
        },
        shared,
        tx,
        read,
        write,
        rx,
        buf,
        outgoing: theirs.is_none(),
        hold_id,
    })
}

impl Established {
    /// Starts the reader and writer tasks of peer `key`.
    pub fn run(self, key: PeerKey, sh: Arc<Context>) {
        let span = tracing::info_span!("peer", addr = %self.addr, key = key.get());
        let Established {
            addr,
            hello,
            shared,
            tx,
            read,
            write,
            rx,
            buf,
            outgoing: _,
            hold_id,
        } = self;
        let fast = hello.fast;
        let (sh2, shared2) = (sh.clone(), shared.clone());
        let writer =
            tokio::spawn(writer(write, rx, sh2, shared2, fast, hold_id).instrument(span.clone()));
        tokio::spawn(
            async move {
                let res = reader(read, buf, key, &sh, &shared, &tx, fast).await;
                let violation = match &res {
                    Err(e) if e.is_violation() => {
                        tracing::info!(error = %e, "dropping peer");
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "peer gone");
                        false
                    }
                    Ok(()) => false,
                };
                let _ = tx.send(Out::Close).await;
                let _ = writer.await;
                let _ = sh
                    .events
                    .send(Event::Down {
                        key,
                        addr,
                        violation,
                    })
                    .await;
            }
            .instrument(span),
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn reader(
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    key: PeerKey,
    sh: &Context,
    shared: &PeerShared,
    tx: &mpsc::Sender<Out>,
    fast: bool,
) -> Result<(), ConnError> {
    let mut held = 0usize;
    let mut run = Run::default();
    loop {
        // Every whole message read so far. Blocks that follow one another
        // in one piece are written together when something else comes or
        // the bytes read are used up (`Run`).
        let mut pos = 0;
        while let Some((msg, used)) = wire::decode(&buf[pos..], &DT2_LIMITS)? {
            match msg {
                Msg::Piece { index, begin, data } => {
                    if let Some(asked) = accept_block(shared, index, begin, data.len())? {
                        let at = pos + used - data.len();
                        if !run.extends(&asked, begin) {
                            run.flush(&buf, key, sh).await;
                        }
                        run.push(asked, begin, at..at + data.len());
                    }
                }
                msg => {
                    run.flush(&buf, key, sh).await;
                    handle(msg, key, sh, shared, tx, fast, &mut held).await?;
                }
            }
            pos += used;
        }
        run.flush(&buf, key, sh).await;
        buf.advance(pos);
        // Room for the next read. A peer we await blocks from gets
        // READ_BIG, so that one read takes many blocks; one that only
        // sends control messages gets READ_SMALL, and a big buffer that is
        // empty goes back once nothing is asked of that peer. A daemon
        // with dozens of peers would otherwise keep READ_BIG each (the
        // fleet's RSS, issue 12).
        let expecting = !shared.outstanding().is_empty();
        if !expecting && buf.is_empty() && buf.capacity() > READ_SMALL {
            buf = BytesMut::with_capacity(READ_SMALL);
        }
        let room = if expecting { READ_BIG } else { READ_SMALL };
        if buf.capacity() - buf.len() < room / 8 {
            buf.reserve(room);
        }
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, read.read_buf(&mut buf)) => {
                r.map_err(|_| ConnError::Protocol("silent for too long"))??
            }
            _ = shared.writer_done.notified() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// A block that arrived: the request it answers, or `None` for one we
/// cancelled a moment ago (ignored). A block nobody asked for, or of the
/// wrong length, is a violation.
fn accept_block(
    shared: &PeerShared,
    index: u32,
    begin: u32,
    len: usize,
) -> Result<Option<Asked>, ConnError> {
    let entry = shared.outstanding().remove(&(index, begin));
    let Some(asked) = entry else {
        let recently = {
            let mut c = shared.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            while c
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) > Duration::from_secs(10))
            {
                c.pop_front();
            }
            c.iter().any(|(k, _)| *k == (index, begin))
        };
        if recently {
            return Ok(None);
        }
        return Err(ConnError::Protocol("a block we did not request"));
    };
    if len != asked.len as usize {
        return Err(ConnError::Protocol("a block of the wrong length"));
    }
    shared
        .down
        .fetch_add(u64::from(asked.len), Ordering::Relaxed);
    Ok(Some(asked))
}

/// Blocks of one piece, one right after another, read from the socket and
/// not yet written: they go into the assembly in one write
/// (`Download::put_run`), then each is reported to the torrent task.
#[derive(Default)]
struct Run {
    /// The assembly, our number for the piece, and the assembly's id and
    /// generation before the write (a reset for a retry in between makes
    /// the blocks stale, fetched again, never received while their bytes
    /// are gone).
    head: Option<(Arc<Download>, PieceIndex, u64, u64)>,
    /// Each block: its offset, its length, and where it lies in the read
    /// buffer.
    blocks: Vec<(u32, u32, std::ops::Range<usize>)>,
    news: Vec<u64>,
}

impl Run {
    /// Whether a block of `asked` at `begin` continues this run (an empty
    /// run continues nothing).
    fn extends(&self, asked: &Asked, begin: u32) -> bool {
        match (&self.head, self.blocks.last()) {
            (Some((dl, ours, _, _)), Some(&(b, l, _))) => {
                Arc::ptr_eq(dl, &asked.dl) && *ours == asked.ours && b + l == begin
            }
            _ => false,
        }
    }

    fn push(&mut self, asked: Asked, begin: u32, at: std::ops::Range<usize>) {
        if self.head.is_none() {
            let (id, gen) = (asked.dl.id, asked.dl.gen());
            self.head = Some((asked.dl, asked.ours, id, gen));
        }
        self.blocks.push((begin, asked.len, at));
    }

    async fn flush(&mut self, buf: &[u8], key: PeerKey, sh: &Context) {
        let Some((dl, ours, id, gen)) = self.head.take() else {
            return;
        };
        let Some(&(first, _, _)) = self.blocks.first() else {
            return;
        };
        let slices: Vec<&[u8]> = self
            .blocks
            .iter()
            .map(|(_, _, r)| buf.get(r.clone()).unwrap_or_default())
            .collect();
        self.news.clear();
        self.news.resize(slices.len(), 0);
        let res = dl.put_run(u64::from(first), &slices, Source::Peer(key), &mut self.news);
        if let Err(e) = res {
            // Not written (a full disk): the assembly cannot be completed
            // here; the job ends, and apt's request falls back to a
            // verified pass-through. Never taken for received, and not the
            // peer's fault.
            tracing::error!(error = %e, "cannot write a block");
            self.blocks.clear();
            let _ = sh.events.send(Event::WriteFailed { piece: ours }).await;
            return;
        }
        for (&(begin, len, _), &new) in self.blocks.iter().zip(&self.news) {
            let _ = sh
                .events
                .send(Event::Block {
                    key,
                    piece: ours,
                    begin,
                    len,
                    new,
                    id,
                    gen,
                })
                .await;
        }
        self.blocks.clear();
    }
}

async fn handle(
    msg: Msg<'_>,
    key: PeerKey,
    sh: &Context,
    shared: &PeerShared,
    tx: &mpsc::Sender<Out>,
    fast: bool,
    held: &mut usize,
) -> Result<(), ConnError> {
    let ev = |e: Event| sh.events.send(e);
    match msg {
        Msg::KeepAlive | Msg::Port(_) | Msg::Suggest(_) | Msg::AllowedFast(_) => {}
        Msg::Unknown { .. } => {}
        Msg::Choke => {
            // BEP 3: a choke discards our requests (BEP 6 peers reject them
            // one by one instead; either way they are free again).
            if !fast {
                shared.outstanding().clear();
            }
            let _ = ev(Event::Choked {
                key,
                choked: true,
                discarded: !fast,
            })
            .await;
        }
        Msg::Unchoke => {
            let _ = ev(Event::Choked {
                key,
                choked: false,
                discarded: false,
            })
            .await;
        }
        Msg::Interested => {
            let _ = ev(Event::Interest {
                key,
                interested: true,
            })
            .await;
        }
        Msg::NotInterested => {
            let _ = ev(Event::Interest {
                key,
                interested: false,
            })
            .await;
        }
        // dt2 names content in dt_hold, never by a shared piece number.
        Msg::Have(_) | Msg::Bitfield(_) | Msg::HaveAll => {
            return Err(ConnError::Protocol(
                "a piece number outside dt_hold (dt2 has no shared numbers)",
            ));
        }
        Msg::HaveNone => {}
        Msg::Request(r) => {
            if !shared.announced().contains(&r.index) {
                return Err(ConnError::Protocol(
                    "request for content we did not announce",
                ));
            }
            if !sh.valid_block(r) {
                return Err(ConnError::Protocol("request outside the piece"));
            }
            // Whether it is served (we choke it, its queue is full) is
            // decided by the writer, in order with our CHOKE and UNCHOKE
            // and the peer's CANCELs (`apply`); here only a flood ends
            // the connection.
            let q = shared.queued.fetch_add(1, Ordering::Relaxed) as usize + 1;
            if q > REQQ_DROP {
                return Err(ConnError::Protocol("request flood"));
            }
            let _ = tx.send(Out::Upload(r)).await;
        }
        Msg::Cancel(r) => {
            let _ = tx.send(Out::CancelUpload(r)).await;
        }
        Msg::Reject(r) => {
            let known = shared.outstanding().remove(&(r.index, r.begin));
            if let Some(a) = known {
                let req = BlockRef { index: a.ours, ..r };
                let _ = ev(Event::Rejected { key, req }).await;
            }
        }
        // Taken apart by the reader (`accept_block`, `Run`).
        Msg::Piece { .. } => {}
        Msg::Extended { id, payload } => match id {
            wire::EXT_HANDSHAKE => {} // a later one: nothing we need changes
            OUR_PEX_ID => {
                if let Ok(p) = wire::Pex::decode(payload) {
                    let _ = ev(Event::Pex { added: p.added }).await;
                }
            }
            OUR_WIP_ID => {
                let w = wire::Wip::decode(payload)?;
                let _ = ev(Event::Wip { key, wip: w }).await;
            }
            OUR_WHO_ID => {
                let who = wire::Who::decode(payload)?;
                // Answered by the torrent task, which drops what comes
                // faster than it answers (never blocking this reader).
                let _ = sh.events.try_send(Event::Who { key, who });
            }
            OUR_HOLD_ID => {
                let hold = wire::Hold::decode(payload)?;
                *held = (*held + hold.add.len()).saturating_sub(hold.drop.len());
                if *held > MAX_PEER_HOLD {
                    return Err(ConnError::Protocol("dt_hold over the limit"));
                }
                let _ = ev(Event::Hold { key, hold }).await;
            }
            _ => {}
        },
    }
    Ok(())
}

async fn writer(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    sh: Arc<Context>,
    shared: Arc<PeerShared>,
    fast: bool,
    hold_id: u8,
) {
    let mut out = BytesMut::with_capacity(WRITE_IDLE);
    // The peer's requests; a relayed one that waited for the mirror's
    // bytes carries since when.
    let mut uploads: VecDeque<(BlockRef, Option<Instant>)> = VecDeque::new();
    // Relayed requests waiting for the mirror's bytes, with when they came.
    let mut waiting: VecDeque<(BlockRef, Instant)> = VecDeque::new();
    let mut file: Option<(u32, std::fs::File)> = None;
    // The blocks of one stored run (kept to reuse its allocation).
    let mut run_buf: Vec<BlockRef> = Vec::new();
    let mut last_write = Instant::now();
    'outer: loop {
        requeue(&mut waiting, &mut uploads, &mut out, &shared, fast);
        // Take every pending command without waiting.
        loop {
            let m = match rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => break 'outer,
            };
            if !apply(m, &mut out, &mut uploads, &shared, fast, hold_id) {
                break 'outer;
            }
        }
        // Serve a batch of uploads (from the store, or relayed).
        let mut served = 0;
        // A relayed block whose bytes are not in yet: later blocks of the
        // same content wait too, unread.
        let mut later: Option<(u32, u32)> = None;
        while served < 16 && out.len() < 256 * 1024 {
            let Some((r, since)) = uploads.pop_front() else {
                break;
            };
            if shared.am_choking.load(Ordering::Relaxed) {
                // Not reached while `apply` drains the queue at a CHOKE;
                // if it were, a BEP 6 peer is still told.
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                if fast {
                    wire::encode(&Msg::Reject(r), &mut out);
                }
                continue;
            }
            // A stored piece: this block and the requests right behind it
            // that continue it, read with one preadv (a leecher asks for a
            // piece's blocks in order; one pread per 16 KiB block was 61k
            // syscalls per GB).
            if later.is_none_or(|(i, _)| i != r.index) && sh.open_stored(r.index, &mut file) {
                let mut run = std::mem::take(&mut run_buf);
                run.push(r);
                let mut end = u64::from(r.begin) + u64::from(r.length);
                let mut bytes = out.len() + r.length as usize;
                while served + run.len() < 16 {
                    let Some(&(n, _)) = uploads.front() else {
                        break;
                    };
                    if n.index != r.index
                        || u64::from(n.begin) != end
                        || bytes + n.length as usize > 256 * 1024
                    {
                        break;
                    }
                    uploads.pop_front();
                    run.push(n);
                    end += u64::from(n.length);
                    bytes += n.length as usize;
                }
                let head_at = out.len();
                let read = file
                    .as_ref()
                    .is_some_and(|(_, f)| read_run(f, &run, &mut out));
                shared.queued.fetch_sub(run.len() as u64, Ordering::Relaxed);
                if !read {
                    out.truncate(head_at);
                    if fast {
                        for b in &run {
                            wire::encode(&Msg::Reject(*b), &mut out);
                        }
                    }
                    run.clear();
                    run_buf = run;
                    continue;
                }
                let n: u64 = run.iter().map(|b| u64::from(b.length)).sum();
                served += run.len();
                run.clear();
                run_buf = run;
                if !uploaded(&mut w, &mut out, head_at, n, &sh, &shared).await {
                    break 'outer;
                }
                continue;
            }
            // The block is read straight into the outgoing buffer, behind
            // its header: one copy from the page cache, not two.
            let head_at = out.len();
            wire::encode_piece_header(r.index, r.begin, r.length, &mut out);
            let body_at = out.len();
            out.resize(body_at + r.length as usize, 0);
            let res = match later {
                Some((i, b)) if i == r.index && r.begin >= b => Block::Later,
                _ => sh.read_block(r, &mut file, &mut out[body_at..]),
            };
            if !matches!(res, Block::Ready(_)) {
                out.truncate(head_at);
            }
            let n = match res {
                Block::Ready(n) => n,
                Block::Later => {
                    // Still counted as queued: it waits for its bytes.
                    waiting.push_back((r, since.unwrap_or_else(Instant::now)));
                    if later.is_none_or(|(i, b)| i != r.index || r.begin < b) {
                        later = Some((r.index, r.begin));
                    }
                    continue;
                }
                Block::Gone => {
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                    if fast {
                        wire::encode(&Msg::Reject(r), &mut out);
                    }
                    continue;
                }
            };
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            if !uploaded(&mut w, &mut out, head_at, n as u64, &sh, &shared).await {
                break 'outer;
            }
            served += 1;
        }
        if !out.is_empty() {
            if !write_within(&mut w, &out).await {
                break;
            }
            out.clear();
            last_write = Instant::now();
            continue;
        }
        if !uploads.is_empty() {
            continue;
        }
        // Idle: a buffer that a batch of uploads grew goes back once
        // nothing was written for WRITE_SHRINK_AFTER (see READ_SMALL). At
        // once, a busy writer regrew it batch after batch (the seed's CPU
        // per GB rose by a third).
        if out.capacity() > WRITE_IDLE && last_write.elapsed() >= WRITE_SHRINK_AFTER {
            out = BytesMut::with_capacity(WRITE_IDLE);
        }
        let mut idle = KEEPALIVE.saturating_sub(last_write.elapsed());
        if out.capacity() > WRITE_IDLE {
            idle = idle.min(WRITE_SHRINK_AFTER.saturating_sub(last_write.elapsed()));
        }
        if !waiting.is_empty() {
            // The mirror's next bytes: look again soon.
            idle = idle.min(RELAY_POLL);
        }
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    // A CHOKE or CANCEL must find the relayed requests
                    // that wait for the mirror's bytes, and the queue's
                    // limit must count them.
                    requeue(&mut waiting, &mut uploads, &mut out, &shared, fast);
                    if !apply(m, &mut out, &mut uploads, &shared, fast, hold_id) {
                        break;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep(idle) => {
                if waiting.is_empty() && last_write.elapsed() >= KEEPALIVE {
                    wire::encode(&Msg::KeepAlive, &mut out);
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    shared.writer_done.notify_one();
}

/// A peer that stops reading (its receive window stays shut) holds no
/// slot: a write that cannot finish in this long closes the connection.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes `out` whole within [`WRITE_STALL`]; false: close.
async fn write_within(w: &mut OwnedWriteHalf, out: &[u8]) -> bool {
    match tokio::time::timeout(WRITE_STALL, w.write_all(out)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::info!("peer stopped reading: closing");
            false
        }
    }
}

/// Puts the relayed requests that wait for the mirror's bytes back at the
/// head of the queue, in order, so that `apply` sees one queue: a CHOKE
/// rejects them with the rest (they used to be dropped later without a
/// REJECT, and a BEP 6 peer waited for its stall timeout), a CANCEL finds
/// them, and the queue's limit counts them. Those that waited longer than
/// [`RELAY_WAIT`] are rejected.
fn requeue(
    waiting: &mut VecDeque<(BlockRef, Instant)>,
    uploads: &mut VecDeque<(BlockRef, Option<Instant>)>,
    out: &mut BytesMut,
    shared: &PeerShared,
    fast: bool,
) {
    for (r, since) in waiting.drain(..).rev() {
        if since.elapsed() > RELAY_WAIT {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            if fast {
                wire::encode(&Msg::Reject(r), out);
            }
        } else {
            uploads.push_front((r, Some(since)));
        }
    }
}

/// Applies one command to the writer's state; false means close. The
/// caller has put waiting relayed requests back in `uploads` first
/// ([`requeue`]).
fn apply(
    m: Out,
    out: &mut BytesMut,
    uploads: &mut VecDeque<(BlockRef, Option<Instant>)>,
    shared: &PeerShared,
    fast: bool,
    hold_id: u8,
) -> bool {
    match m {
        Out::Request(rs, dl, ours) => {
            let mut o = shared.outstanding();
            for r in rs {
                let asked = Asked {
                    len: r.length,
                    dl: dl.clone(),
                    ours,
                };
                o.insert((r.index, r.begin), asked);
                wire::encode(&Msg::Request(r), out);
            }
        }
        Out::Cancel(r) => {
            if let Some(a) = shared.outstanding().remove(&(r.index, r.begin)) {
                cancelled(shared, r.index, r.begin, a.len, out);
            }
        }
        Out::CancelPiece(p) => cancel_where(shared, Some(p), out),
        Out::CancelAll => cancel_where(shared, None, out),
        Out::Hold(h) => {
            shared.announced().extend(h.add.iter().map(|(n, _)| *n));
            wire::encode(
                &Msg::Extended {
                    id: hold_id,
                    payload: &h.encode(),
                },
                out,
            );
        }
        Out::Choke => {
            shared.am_choking.store(true, Ordering::Relaxed);
            // BEP 3 drops the queue; BEP 6 peers are told, one by one,
            // after the CHOKE (as libtorrent does): a reject from a peer
            // that has not choked us means it cannot serve that content,
            // and the leecher forgets that it holds it. Rejects sent first
            // made a leecher forget every seed that rotated it out of its
            // upload slots, and go to the mirror for what they held
            // (bench/install).
            wire::encode(&Msg::Choke, out);
            for (r, _) in uploads.drain(..) {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                if fast {
                    wire::encode(&Msg::Reject(r), out);
                }
            }
        }
        Out::Unchoke => {
            shared.am_choking.store(false, Ordering::Relaxed);
            wire::encode(&Msg::Unchoke, out);
        }
        Out::Interested => wire::encode(&Msg::Interested, out),
        Out::NotInterested => wire::encode(&Msg::NotInterested, out),
        Out::Extended(id, payload) => wire::encode(
            &Msg::Extended {
                id,
                payload: &payload,
            },
            out,
        ),
        Out::Upload(r) => {
            // Decided here rather than in the reader: a request the reader
            // saw while an UNCHOKE, or the CANCEL sent just before it,
            // still waited in this queue was rejected after that UNCHOKE,
            // and a leecher takes such a reject for "cannot serve it".
            if shared.am_choking.load(Ordering::Relaxed) || uploads.len() >= REQQ {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                if fast {
                    wire::encode(&Msg::Reject(r), out);
                }
            } else {
                uploads.push_back((r, None));
            }
        }
        Out::CancelUpload(r) => {
            let before = uploads.len();
            uploads.retain(|(x, _)| *x != r);
            let removed = before - uploads.len();
            shared.queued.fetch_sub(removed as u64, Ordering::Relaxed);
        }
        Out::Wip(id, w) => {
            // What we relay may be requested from now on.
            shared.announced().extend(w.add.iter().map(|(n, _)| *n));
            wire::encode(
                &Msg::Extended {
                    id,
                    payload: &w.encode(),
                },
                out,
            );
        }
        Out::Close => return false,
    }
    true
}

/// Cancels our requests for our piece `piece` (all of them for `None`),
/// in order.
fn cancel_where(shared: &PeerShared, piece: Option<PieceIndex>, out: &mut BytesMut) {
    let mut gone: Vec<(u32, u32, u32)> = Vec::new();
    shared.outstanding().retain(|&(index, begin), a| {
        let hit = piece.is_none_or(|p| p == a.ours);
        if hit {
            gone.push((index, begin, a.len));
        }
        !hit
    });
    gone.sort_unstable();
    for (index, begin, length) in gone {
        cancelled(shared, index, begin, length, out);
    }
}

/// Records a cancelled request (a block may still come for it) and
/// encodes the CANCEL.
fn cancelled(shared: &PeerShared, index: u32, begin: u32, length: u32, out: &mut BytesMut) {
    shared
        .cancelled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(((index, begin), Instant::now()));
    wire::encode(
        &Msg::Cancel(BlockRef {
            index,
            begin,
            length,
        }),
        out,
    );
}

/// Reads one block of a stored piece for upload, from the file opened for
/// it.
/// Counts `n` bytes just put in `out` at `head_at` as uploaded, after the
/// upload limit's wait: what went before them is written first, they go
/// after the wait. False if that write failed.
async fn uploaded(
    w: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    head_at: usize,
    n: u64,
    sh: &Context,
    shared: &PeerShared,
) -> bool {
    let wait = {
        let mut tb = sh.upload_limit.lock().unwrap_or_else(|e| e.into_inner());
        tb.take(n, sh.now_ms())
    };
    if wait > 0 {
        if head_at > 0 && !write_within(w, &out[..head_at]).await {
            return false;
        }
        out.advance(head_at);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    shared.up.fetch_add(n, Ordering::Relaxed);
    sh.uploaded.fetch_add(n, Ordering::Relaxed);
    true
}

/// Appends each block of `run` (contiguous blocks of one piece, in
/// order) to `out` behind its header, the bodies read from `f` with one
/// `preadv` (more if the kernel returns less). False if the file ended or
/// failed before the run did; `out` then holds a partial run, which the
/// caller cuts.
fn read_run(f: &std::fs::File, run: &[BlockRef], out: &mut BytesMut) -> bool {
    let Some(first) = run.first() else {
        return true;
    };
    let start = out.len();
    let mut bodies = Vec::with_capacity(run.len());
    for b in run {
        wire::encode_piece_header(b.index, b.begin, b.length, out);
        let at = out.len();
        out.resize(at + b.length as usize, 0);
        bodies.push((at, b.length as usize));
    }
    let mut at = u64::from(first.begin);
    let mut tail: &mut [u8] = &mut out[start..];
    let mut base = start;
    // The body slots, as disjoint slices of `out` (the headers between
    // them are skipped).
    let mut slots: Vec<&mut [u8]> = Vec::with_capacity(run.len());
    for &(body_at, len) in &bodies {
        let rest = std::mem::take(&mut tail);
        let (_, from_body) = rest.split_at_mut(body_at - base);
        let (body, after) = from_body.split_at_mut(len);
        slots.push(body);
        tail = after;
        base = body_at + len;
    }
    let mut first_slot = 0;
    while first_slot < slots.len() {
        let mut iov: Vec<std::io::IoSliceMut<'_>> = slots[first_slot..]
            .iter_mut()
            .map(|s| std::io::IoSliceMut::new(s))
            .collect();
        let n = match rustix::io::preadv(f, &mut iov, at) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        drop(iov);
        at += n as u64;
        // Skip what was filled; a slot filled in part keeps its rest.
        let mut left = n;
        while left > 0 && first_slot < slots.len() {
            let len = slots[first_slot].len();
            if left >= len {
                left -= len;
                first_slot += 1;
            } else {
                let s = std::mem::take(&mut slots[first_slot]);
                slots[first_slot] = &mut s[left..];
                left = 0;
            }
        }
    }
    true
}

pub fn read_stored(
    r: BlockRef,
    file: &mut Option<(u32, std::fs::File)>,
    buf: &mut [u8],
) -> Option<usize> {
    let (i, f) = file.as_ref()?;
    if *i != r.index {
        return None;
    }
    let n = r.length as usize;
    f.read_exact_at(buf.get_mut(..n)?, u64::from(r.begin))
        .ok()?;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our CHOKE goes before the rejects of the requests it drops: a
    /// reject from a peer that still unchokes us says "I cannot serve
    /// this", and the receiver forgets that we hold it.
    #[test]
    fn choke_goes_before_its_rejects() {
        let shared = PeerShared::default();
        let r = |begin| BlockRef {
            index: 3,
            begin,
            length: BLOCK,
        };
        let mut uploads: VecDeque<(BlockRef, Option<Instant>)> =
            [(r(0), None), (r(BLOCK), None)].into_iter().collect();
        shared.queued.store(2, Ordering::Relaxed);
        for (fast, want) in [
            (true, vec!["choke", "reject 0", "reject 16384"]),
            (false, vec!["choke"]),
        ] {
            let mut up = uploads.clone();
            let mut out = BytesMut::new();
            applied(Out::Choke, &mut out, &mut up, &shared, fast);
            assert_eq!(words(&out), want, "fast={fast}");
            assert!(up.is_empty());
        }
        uploads.clear();
    }

    /// A run of contiguous blocks is read with one preadv into the body
    /// slots behind their headers: each PIECE message carries exactly its
    /// own bytes (a short last block too), and a run past the file's end
    /// fails instead of sending zeros.
    #[test]
    fn a_run_of_blocks_is_read_into_its_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("piece");
        let size = 3 * BLOCK as usize + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let b = |begin: u32, length: u32| BlockRef {
            index: 5,
            begin,
            length,
        };
        type Case = (&'static str, Vec<BlockRef>, bool);
        let cases: Vec<Case> = vec![
            ("one block", vec![b(0, BLOCK)], true),
            (
                "the whole piece, a short block last",
                vec![
                    b(0, BLOCK),
                    b(BLOCK, BLOCK),
                    b(2 * BLOCK, BLOCK),
                    b(3 * BLOCK, 1000),
                ],
                true,
            ),
            (
                "from the middle",
                vec![b(BLOCK + 3, 100), b(BLOCK + 103, 50)],
                true,
            ),
            (
                "past the end",
                vec![b(3 * BLOCK, 1000), b(3 * BLOCK + 1000, 10)],
                false,
            ),
        ];
        for (what, run, ok) in cases {
            let mut out = BytesMut::from(&b"before"[..]);
            assert_eq!(read_run(&f, &run, &mut out), ok, "{what}");
            if !ok {
                continue;
            }
            assert_eq!(&out[..6], b"before", "{what}");
            let mut at = 6;
            for blk in &run {
                let (msg, used) = wire::decode(&out[at..], &DT2_LIMITS)
                    .expect("a valid message")
                    .expect("a whole message");
                let Msg::Piece {
                    index,
                    begin,
                    data: got,
                } = msg
                else {
                    panic!("{what}: not a PIECE: {msg:?}");
                };
                assert_eq!((index, begin), (blk.index, blk.begin), "{what}");
                let from = blk.begin as usize;
                assert_eq!(got, &data[from..from + blk.length as usize], "{what}");
                at += used;
            }
            assert_eq!(at, out.len(), "{what}: nothing after the run");
        }
    }

    /// Block `i` (16 KiB each) of piece `index`.
    fn nth_block(index: u32, i: u32) -> BlockRef {
        BlockRef {
            index,
            begin: i * BLOCK,
            length: BLOCK,
        }
    }

    /// `apply`, which must not close the connection.
    fn applied(
        m: Out,
        out: &mut BytesMut,
        uploads: &mut VecDeque<(BlockRef, Option<Instant>)>,
        shared: &PeerShared,
        fast: bool,
    ) {
        assert!(
            apply(m, out, uploads, shared, fast, 3),
            "the connection closed"
        );
    }

    /// What the writer put in `out`, one word per message.
    fn words(out: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        let mut at = 0;
        while let Ok(Some((msg, used))) = wire::decode(&out[at..], &DT2_LIMITS) {
            got.push(match msg {
                Msg::Choke => "choke".to_string(),
                Msg::Unchoke => "unchoke".to_string(),
                Msg::Reject(b) => format!("reject {}", b.begin),
                other => format!("{other:?}"),
            });
            at += used;
        }
        got
    }

    /// A request is admitted by the writer, in order with the messages
    /// before it: a CANCEL that frees a place in a full queue lets the
    /// request after it in, and a request after our UNCHOKE is served, not
    /// rejected. Rejected: a request while we choke, and one beyond `REQQ`.
    #[test]
    fn requests_are_admitted_in_order_with_cancels_and_unchokes() {
        let shared = PeerShared::default();
        let r = |i: u32| nth_block(3, i);
        let mut uploads: VecDeque<(BlockRef, Option<Instant>)> = VecDeque::new();
        let mut out = BytesMut::new();
        // Each step: what the writer is handed, whether the peer is a BEP 6
        // one, how many requests the reader had counted, and what goes out.
        let steps: Vec<(Out, bool, u64, Vec<String>)> = vec![
            // Choking, as every connection starts: rejected.
            (Out::Upload(r(0)), true, 1, vec!["reject 0".into()]),
            // The reader counted it while our UNCHOKE still waited here:
            // served.
            (Out::Unchoke, true, 1, vec!["unchoke".into()]),
            (Out::Upload(r(0)), true, 1, vec![]),
        ];
        shared.am_choking.store(true, Ordering::Relaxed);
        for (i, (m, fast, queued, want)) in steps.into_iter().enumerate() {
            shared.queued.store(queued, Ordering::Relaxed);
            out.clear();
            applied(m, &mut out, &mut uploads, &shared, fast);
            assert_eq!(words(&out), want, "step {i}");
        }
        assert_eq!(uploads.len(), 1);
        // A full queue: a CANCEL, then the request that takes its place.
        uploads.clear();
        uploads.extend((0..REQQ as u32).map(|i| (r(i), None)));
        shared.queued.store(REQQ as u64 + 1, Ordering::Relaxed);
        out.clear();
        for m in [Out::CancelUpload(r(0)), Out::Upload(r(REQQ as u32))] {
            applied(m, &mut out, &mut uploads, &shared, true);
        }
        assert!(words(&out).is_empty(), "{:?}", words(&out));
        assert_eq!(uploads.len(), REQQ);
        // One more, with no CANCEL before it: rejected.
        shared.queued.fetch_add(1, Ordering::Relaxed);
        applied(Out::Upload(r(7)), &mut out, &mut uploads, &shared, true);
        assert_eq!(words(&out), [format!("reject {}", 7 * BLOCK)]);
        assert_eq!(shared.queued.load(Ordering::Relaxed), REQQ as u64);
        // A BEP 3 peer is not told.
        out.clear();
        applied(Out::Choke, &mut out, &mut uploads, &shared, false);
        shared.queued.fetch_add(1, Ordering::Relaxed);
        applied(Out::Upload(r(0)), &mut out, &mut uploads, &shared, false);
        assert_eq!(words(&out), ["choke"]);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 0);
    }

    /// Relayed requests that wait for the mirror's bytes are one queue
    /// with the rest once `requeue` ran: a CANCEL finds them, a CHOKE
    /// rejects them (after the CHOKE), the queue's limit counts them, and
    /// one that waited longer than `RELAY_WAIT` is rejected.
    #[test]
    fn waiting_relayed_requests_are_cancelled_choked_and_counted() {
        let shared = PeerShared::default();
        let r = |i: u32| nth_block(5, i);
        let now = Instant::now();
        let Some(old) = now.checked_sub(RELAY_WAIT + Duration::from_secs(1)) else {
            return; // a clock too young to hold such an instant
        };
        let mut uploads: VecDeque<(BlockRef, Option<Instant>)> = VecDeque::new();
        let mut waiting: VecDeque<(BlockRef, Instant)> = [(r(0), old), (r(1), now), (r(2), now)]
            .into_iter()
            .collect();
        shared.queued.store(3, Ordering::Relaxed);
        let mut out = BytesMut::new();
        requeue(&mut waiting, &mut uploads, &mut out, &shared, true);
        assert!(waiting.is_empty());
        assert_eq!(words(&out), ["reject 0"]);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 2);
        let queue: Vec<u32> = uploads.iter().map(|(b, _)| b.begin / BLOCK).collect();
        assert_eq!(queue, [1, 2]);
        assert!(uploads.iter().all(|(_, since)| since.is_some()));
        out.clear();
        applied(
            Out::CancelUpload(r(1)),
            &mut out,
            &mut uploads,
            &shared,
            true,
        );
        assert_eq!(shared.queued.load(Ordering::Relaxed), 1);
        // A full queue counts the relayed request too.
        uploads.extend((3..REQQ as u32 + 2).map(|i| (r(i), None)));
        assert_eq!(uploads.len(), REQQ);
        shared.queued.store(REQQ as u64 + 1, Ordering::Relaxed);
        applied(Out::Upload(r(9999)), &mut out, &mut uploads, &shared, true);
        assert_eq!(words(&out), [format!("reject {}", 9999 * BLOCK)]);
        out.clear();
        applied(Out::Choke, &mut out, &mut uploads, &shared, true);
        let w = words(&out);
        assert_eq!(w.first().map(String::as_str), Some("choke"));
        assert_eq!(w.get(1), Some(&format!("reject {}", 2 * BLOCK)));
        assert_eq!(w.len(), REQQ + 1);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 0);
    }
}
