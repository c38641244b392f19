//! Tracker client: announce and scrape against any standard tracker, over
//! HTTP (BEP 3/23/7/48) or UDP (BEP 15). This is what the debtorrent daemon
//! calls. The wire formats live in [`crate::http_proto`] and
//! [`crate::udp_proto`]; this module only does the I/O.
//!
//! UDP: each call uses a fresh socket and a fresh connection id (connect,
//! then announce or scrape: two round trips). Trackers such as ours bind
//! connection ids to the client's address *and port*, so an id cannot be
//! reused from another socket; keeping one long-lived socket per tracker
//! would save the connect round trip and is left for later.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UdpSocket};

use crate::http_proto::{self, AnnounceParams, AnnounceResponse, ResponseError, ScrapeEntry};
use crate::types::{random_u64, InfoHash};
use crate::udp_proto::{self, UdpAnnounce, UdpResponse};

/// Largest HTTP tracker response body accepted.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad tracker URL {0:?}")]
    BadUrl(String),
    #[error("unsupported tracker URL scheme {0:?} (http and udp are supported)")]
    UnsupportedScheme(String),
    #[error("cannot resolve tracker host {0:?}")]
    Resolve(String),
    #[error("tracker did not answer in time")]
    Timeout,
    #[error("tracker I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("tracker HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("tracker HTTP status {0}")]
    Status(u16),
    #[error("tracker response body too large or unreadable")]
    Body,
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error("tracker error: {0}")]
    Tracker(String),
    #[error("tracker URL has no scrape counterpart (path does not end in /announce)")]
    NoScrape,
    #[error("malformed UDP tracker response")]
    BadPacket,
}

/// Client settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Time allowed for one whole HTTP request, or one UDP request/answer
    /// exchange (per try).
    pub timeout: Duration,
    /// UDP tries per exchange (BEP 15 retransmits lost packets).
    pub udp_tries: u32,
    /// Send from this address (a daemon with a specific peer address
    /// announces from it, so the tracker sees the IP it listens on).
    pub local_ip: Option<std::net::IpAddr>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(15),
            udp_tries: 3,
            local_ip: None,
        }
    }
}

/// The tracker client. Cheap to share (`Arc`) between tasks.
#[derive(Debug, Default, Clone)]
pub struct TrackerClient {
    cfg: ClientConfig,
}

enum Target {
    Http(http::Uri),
    Udp { host: String, port: u16 },
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let uri: http::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let host = uri
        .host()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    match scheme.as_str() {
        "http" => Ok(Target::Http(uri)),
        "udp" => Ok(Target::Udp {
            host,
            port: uri
                .port_u16()
                .ok_or_else(|| ClientError::BadUrl(url.into()))?,
        }),
        s => Err(ClientError::UnsupportedScheme(s.into())),
    }
}

/// The scrape URL of an announce URL (BEP 48 convention: replace the last
/// path segment's leading `announce` with `scrape`).
pub fn scrape_url(announce: &str) -> Result<String, ClientError> {
    let (base, query) = match announce.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (announce, None),
    };
    let slash = base.rfind('/').ok_or(ClientError::NoScrape)?;
    let last = &base[slash + 1..];
    let rest = last.strip_prefix("announce").ok_or(ClientError::NoScrape)?;
    let mut out = format!("{}/scrape{}", &base[..slash], rest);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

impl TrackerClient {
    pub fn new(cfg: ClientConfig) -> Self {
        TrackerClient { cfg }
    }

    /// Announce to the tracker at `url` (`http://…/announce` or
    /// `udp://host:port[/…]`).
    #[tracing::instrument(skip(self, params), fields(info_hash = %params.info_hash))]
    pub async fn announce(
        &self,
        url: &str,
        params: &AnnounceParams,
    ) -> Result<AnnounceResponse, ClientError> {
        match parse_url(url)? {
            Target::Http(uri) => {
                let body = self
                    .http_get(&uri, &http_proto::announce_query(params))
                    .await?;
                Ok(http_proto::parse_announce_response(&body)?)
            }
            Target::Udp { host, port } => self.udp_announce(&host, port, params).await,
        }
    }

    /// Scrape `hashes` from the tracker whose announce URL is `url`.
    /// Returns the entries the tracker listed (HTTP trackers may omit
    /// unknown torrents; UDP returns one entry per hash, in order).
    #[tracing::instrument(skip(self, hashes))]
    pub async fn scrape(
        &self,
        url: &str,
        hashes: &[InfoHash],
    ) -> Result<Vec<(InfoHash, ScrapeEntry)>, ClientError> {
        match parse_url(url)? {
            Target::Http(_) => {
                let surl = scrape_url(url)?;
                let Target::Http(uri) = parse_url(&surl)? else {
                    return Err(ClientError::NoScrape);
                };
                let body = self
                    .http_get(&uri, &http_proto::scrape_query(hashes))
                    .await?;
                Ok(http_proto::parse_scrape_response(&body)?)
            }
            Target::Udp { host, port } => self.udp_scrape(&host, port, hashes).await,
        }
    }

    async fn http_get(&self, uri: &http::Uri, query: &str) -> Result<Bytes, ClientError> {
        let host = uri.host().ok_or(ClientError::NoScrape)?;
        let port = uri.port_u16().unwrap_or(80);
        let mut path = uri.path().to_string();
        path.push('?');
        if let Some(q) = uri.query() {
            path.push_str(q);
            path.push('&');
        }
        path.push_str(query);
        let host_header = match uri.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let fut = async move {
            let stream = match self.cfg.local_ip {
                None => TcpStream::connect((host.as_str(), port)).await?,
                Some(ip) => {
                    let addr = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .find(|a| a.is_ipv4() == ip.is_ipv4())
                        .ok_or_else(|| ClientError::Resolve(host.clone()))?;
                    let sock = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(ip, 0))?;
                    sock.connect(addr).await?
                }
            };
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let conn_task = tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::get(path)
                .header(hyper::header::HOST, host_header)
                .header(
                    hyper::header::USER_AGENT,
                    concat!("debtorrent/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|_| ClientError::BadUrl(uri.to_string()))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|_| ClientError::Body)?
                .to_bytes();
            conn_task.abort();
            // Some trackers send failures with a 4xx status and a bencoded
            // body: prefer the body's reason when there is one.
            if !status.is_success() && !body.starts_with(b"d") {
                return Err(ClientError::Status(status.as_u16()));
            }
            Ok(body)
        };
        tokio::time::timeout(self.cfg.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn udp_socket(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(UdpSocket, SocketAddr), ClientError> {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| ClientError::Resolve(host.into()))?
            .next()
            .ok_or_else(|| ClientError::Resolve(host.into()))?;
        let bind: SocketAddr = match self.cfg.local_ip {
            Some(ip) if ip.is_ipv4() == addr.is_ipv4() => SocketAddr::new(ip, 0),
            _ if addr.is_ipv4() => ([0, 0, 0, 0], 0).into(),
            _ => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(addr).await?;
        Ok((sock, addr))
    }

    /// Send `req` (with transaction id `tid`) and wait for the answer with
    /// the same transaction id, retrying on timeout.
    async fn exchange(
        &self,
        sock: &UdpSocket,
        req: &[u8],
        tid: u32,
        buf: &mut [u8],
    ) -> Result<usize, ClientError> {
        for _ in 0..self.cfg.udp_tries.max(1) {
            sock.send(req).await?;
            let deadline = tokio::time::Instant::now() + self.cfg.timeout;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(n)) => {
                        // Ignore stray packets (answers to earlier tries).
                        if n >= 8 && buf[4..8] == tid.to_be_bytes() {
                            return Ok(n);
                        }
                    }
                }
            }
        }
        Err(ClientError::Timeout)
    }

    async fn connection_id(&self, sock: &UdpSocket) -> Result<u64, ClientError> {
        let tid = random_u64() as u32;
        let mut req = Vec::with_capacity(16);
        udp_proto::encode_connect_request(tid, &mut req);
        let mut buf = [0u8; 2048];
        let n = self.exchange(sock, &req, tid, &mut buf).await?;
        match udp_proto::parse_response(&buf[..n]).map_err(|_| ClientError::BadPacket)? {
            UdpResponse::Connect { connection_id, .. } => Ok(connection_id),
            UdpResponse::Error { message, .. } => Err(ClientError::Tracker(message)),
            _ => Err(ClientError::BadPacket),
        }
    }

    async fn udp_announce(
        &self,
        host: &str,
        port: u16,
        p: &AnnounceParams,
    ) -> Result<AnnounceResponse, ClientError> {
        let (sock, addr) = self.udp_socket(host, port).await?;
        let connection_id = self.connection_id(&sock).await?;
        let tid = random_u64() as u32;
        let mut req = Vec::with_capacity(udp_proto::ANNOUNCE_LEN);
        udp_proto::encode_announce_request(
            &UdpAnnounce {
                connection_id,
                transaction_id: tid,
                info_hash: p.info_hash,
                peer_id: p.peer_id,
                downloaded: p.downloaded,
                left: p.left,
                uploaded: p.uploaded,
                event: p.event,
                ip: 0,
                key: p.key,
                num_want: p
                    .numwant
                    .map(|n| n.min(i32::MAX as u32) as i32)
                    .unwrap_or(-1),
                port: p.port,
            },
            &mut req,
        );
        let mut buf = [0u8; 4096];
        let n = self.exchange(&sock, &req, tid, &mut buf).await?;
        match udp_proto::parse_response(&buf[..n]).map_err(|_| ClientError::BadPacket)? {
            UdpResponse::Announce {
                interval,
                leechers,
                seeders,
                peers,
                ..
            } => {
                let mut out = Vec::new();
                http_proto::decode_compact(peers, addr.is_ipv6(), &mut out);
                Ok(AnnounceResponse {
                    interval,
                    min_interval: None,
                    complete: Some(seeders),
                    incomplete: Some(leechers),
                    peers: out,
                    warning: None,
                })
            }
            UdpResponse::Error { message, .. } => Err(ClientError::Tracker(message)),
            _ => Err(ClientError::BadPacket),
        }
    }

    async fn udp_scrape(
        &self,
        host: &str,
        port: u16,
        hashes: &[InfoHash],
    ) -> Result<Vec<(InfoHash, ScrapeEntry)>, ClientError> {
        let (sock, _) = self.udp_socket(host, port).await?;
        let connection_id = self.connection_id(&sock).await?;
        let mut out = Vec::with_capacity(hashes.len());
        for chunk in hashes.chunks(udp_proto::MAX_SCRAPE_HASHES) {
            let tid = random_u64() as u32;
            let mut req = Vec::new();
            udp_proto::encode_scrape_request(connection_id, tid, chunk, &mut req);
            let mut buf = [0u8; 2048];
            let n = self.exchange(&sock, &req, tid, &mut buf).await?;
            match udp_proto::parse_response(&buf[..n]).map_err(|_| ClientError::BadPacket)? {
                UdpResponse::Scrape { entries, .. } => {
                    for (h, (seeders, completed, leechers)) in chunk.iter().zip(entries) {
                        out.push((
                            *h,
                            ScrapeEntry {
                                complete: seeders,
                                downloaded: completed,
                                incomplete: leechers,
                            },
                        ));
                    }
                }
                UdpResponse::Error { message, .. } => return Err(ClientError::Tracker(message)),
                _ => return Err(ClientError::BadPacket),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            ("http://t.example:6969/announce", true),
            ("udp://127.0.0.1:6969", true),
            ("udp://[::1]:6969/announce", true),
            ("udp://127.0.0.1/announce", false),
            ("https://t.example/announce", false),
            ("wss://x", false),
            ("not a url", false),
        ];
        for (u, ok) in cases {
            assert_eq!(parse_url(u).is_ok(), ok, "{u}");
        }
        let scrapes = [
            ("http://a/announce", Some("http://a/scrape")),
            (
                "http://a/x/announce.php?k=1",
                Some("http://a/x/scrape.php?k=1"),
            ),
            ("http://a/a", None),
            ("http://a/announce/x", None),
        ];
        for (u, want) in scrapes {
            assert_eq!(scrape_url(u).ok().as_deref(), want, "{u}");
        }
    }
}
