//! Port mapping behind NAT: UPnP IGD (docs/swarm-design.md §10.1).
//!
//! One task per daemon. It searches for a gateway (SSDP, through
//! `librqbit-upnp`), maps the peer port for TCP (peers) and UDP (the DHT)
//! to this host, asks for the external address, and renews the mapping at
//! half its lease. At shutdown the mapping is deleted. Where no gateway
//! answers, one log line says so and the task searches again now and then,
//! quietly; nothing else changes.
//!
//! Every network step has a time limit ([`STEP_TIMEOUT`], the search its
//! own), so a gateway that never answers or answers garbage costs a retry,
//! never a stall: the daemon does not wait for this task at start.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;
use tokio::time::Instant;
use tracing::Instrument;

use super::igd::{self, Action, IgdError, Proto};

/// One HTTP exchange with the gateway (description, SOAP call).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an SSDP search waits for answers.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// After a search found nothing, or a mapping failed, search again after
/// this long.
pub const RETRY_EVERY: Duration = Duration::from_secs(300);
const DESCRIPTION: &str = "debtorrent";
/// Other external ports tried when the gateway reports a conflict (718).
const CONFLICT_TRIES: u16 = 4;

#[derive(Clone, Debug)]
pub struct Config {
    /// Our peer address: its port is mapped; its IP, when not unspecified,
    /// is the internal client.
    pub peer_addr: SocketAddr,
    /// Lease asked for; renewed at half.
    pub lease: Duration,
}

/// The port mapping in `/status.json` (`swarm.discovery.upnp`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UpnpStatus {
    pub enabled: bool,
    /// `searching`, `no gateway`, `mapped`, `failed` or `removed`.
    pub state: &'static str,
    /// The gateway's control URL.
    pub gateway: Option<String>,
    /// The address the gateway forwards to.
    pub internal: Option<SocketAddr>,
    pub external_ip: Option<IpAddr>,
    pub external_port: Option<u16>,
    /// Time from start to the first mapping.
    pub mapped_in_ms: Option<u64>,
    /// Successful renewals since.
    pub renewals: u64,
    pub last_error: Option<String>,
}

/// Where the gateway is and how to reach its WAN service.
#[derive(Clone, Debug)]
struct Gateway {
    control: String,
    service: String,
    local_ip: IpAddr,
}

/// What to delete at shutdown.
#[derive(Clone, Debug)]
struct Mapped {
    gw: Gateway,
    external: u16,
}

#[derive(Default)]
struct Shared {
    status: Mutex<UpnpStatus>,
    mapped: Mutex<Option<Mapped>>,
}

/// The running port mapper; [`PortMapper::shutdown`] removes the mapping.
pub(crate) struct PortMapper {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Igd(#[from] IgdError),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("gateway did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

impl PortMapper {
    /// Starts the task. `on_external` is called with the external port
    /// whenever a mapping is made, so announces can carry it.
    pub(crate) fn start(cfg: Config, on_external: Box<dyn Fn(u16) + Send + Sync>) -> PortMapper {
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            st.enabled = true;
            st.state = "searching";
        }
        let http = reqwest::Client::builder()
            .timeout(STEP_TIMEOUT)
            .connect_timeout(STEP_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        let task = tokio::spawn({
            let (shared, http) = (shared.clone(), http.clone());
            async move { run(cfg, shared, http, on_external).await }
                .instrument(tracing::info_span!("upnp"))
        });
        PortMapper { shared, task, http }
    }

    pub(crate) fn status(&self) -> UpnpStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops renewing and deletes the mapping (each protocol within
    /// [`STEP_TIMEOUT`]).
    pub(crate) async fn shutdown(&self) {
        self.task.abort();
        let m = self
            .shared
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(m) = m else { return };
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = igd::delete_port_mapping(&m.gw.service, proto, m.external);
            match call(&self.http, &m.gw.control, a)
                .await
                .and_then(|x| igd::parse_ok(&x).map_err(StepError::from))
            {
                Ok(()) => tracing::info!(port = m.external, ?proto, "UPnP: mapping removed"),
                Err(e) => {
                    tracing::warn!(port = m.external, ?proto, error = %e, "UPnP: cannot remove the mapping")
                }
            }
        }
        let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        st.state = "removed";
    }
}

fn set(shared: &Shared, f: impl FnOnce(&mut UpnpStatus)) {
    f(&mut shared.status.lock().unwrap_or_else(|e| e.into_inner()));
}

async fn run(
    cfg: Config,
    shared: Arc<Shared>,
    http: reqwest::Client,
    on_external: Box<dyn Fn(u16) + Send + Sync>,
) {
    let start = Instant::now();
    let mut told_none = false;
    loop {
        let gw = match find_gateway(cfg.peer_addr).await {
            Ok(gw) => gw,
            Err(e) => {
                if !told_none {
                    tracing::info!(error = %e, "UPnP: no gateway answered; the peer port is not mapped (searching again every {} s)", RETRY_EVERY.as_secs());
                    told_none = true;
                } else {
                    tracing::debug!(error = %e, "UPnP: no gateway");
                }
                set(&shared, |s| {
                    s.state = "no gateway";
                    s.last_error = Some(e.to_string());
                });
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        set(&shared, |s| s.gateway = Some(gw.control.clone()));
        let port = cfg.peer_addr.port();
        let external = match map(&http, &gw, port, port, cfg.lease).await {
            Ok(ext) => ext,
            Err(e) => {
                tracing::warn!(gateway = %gw.control, error = %e, "UPnP: the gateway did not map the peer port");
                set(&shared, |s| {
                    s.state = "failed";
                    s.last_error = Some(e.to_string());
                });
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        *shared.mapped.lock().unwrap_or_else(|e| e.into_inner()) = Some(Mapped {
            gw: gw.clone(),
            external,
        });
        let ext_ip = external_ip(&http, &gw).await;
        let took = start.elapsed();
        tracing::info!(
            gateway = %gw.control,
            internal = %SocketAddr::new(gw.local_ip, port),
            external_ip = ?ext_ip.as_ref().ok(),
            external_port = external,
            took_ms = took.as_millis() as u64,
            "UPnP: peer port mapped"
        );
        set(&shared, |s| {
            s.state = "mapped";
            s.internal = Some(SocketAddr::new(gw.local_ip, port));
            s.external_ip = ext_ip.as_ref().ok().copied();
            s.external_port = Some(external);
            s.mapped_in_ms.get_or_insert(took.as_millis() as u64);
            s.last_error = ext_ip.as_ref().err().map(|e| e.to_string());
        });
        on_external(external);
        // Renew at half the lease until a renewal fails; then start over.
        loop {
            tokio::time::sleep(renew_after(cfg.lease)).await;
            match map(&http, &gw, port, external, cfg.lease).await {
                Ok(_) => set(&shared, |s| s.renewals += 1),
                Err(e) => {
                    tracing::warn!(error = %e, "UPnP: renewal failed; searching again");
                    set(&shared, |s| {
                        s.state = "searching";
                        s.last_error = Some(e.to_string());
                    });
                    break;
                }
            }
        }
    }
}

/// When to renew a lease: at half, at least 5 s (a lease of 0 is
/// permanent, renewed every 30 min to survive a gateway reboot).
pub fn renew_after(lease: Duration) -> Duration {
    if lease.is_zero() {
        return Duration::from_secs(1800);
    }
    (lease / 2).max(Duration::from_secs(5))
}

/// The address this host uses toward `gateway` (no packet is sent), unless
/// the peer address names one.
fn local_ip_toward(gateway: SocketAddr, peer_addr: SocketAddr) -> Option<IpAddr> {
    if !peer_addr.ip().is_unspecified() {
        return Some(peer_addr.ip());
    }
    let bind: SocketAddr = match gateway {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(gateway).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Searches (SSDP) and takes the first answer whose description names a
/// WAN connection service: the search goes on only while no answer is
/// usable, so a mapping does not wait out [`SEARCH_TIMEOUT`].
async fn find_gateway(peer_addr: SocketAddr) -> Result<Gateway, StepError> {
    let (tx, mut rx) = unbounded_channel();
    let search = async move {
        let r = librqbit_upnp::discover_once(
            &tx,
            librqbit_upnp::SSDP_SEARCH_WAN_IPCONNECTION_ST,
            SEARCH_TIMEOUT,
            None,
        )
        .await;
        // `tx` drops here: the answers end with the search.
        r
    };
    let search = tokio::time::timeout(SEARCH_TIMEOUT + Duration::from_secs(1), search);
    tokio::pin!(search);
    let mut searching = true;
    let mut seen = std::collections::HashSet::new();
    let mut last = StepError::Other("no SSDP answer".into());
    loop {
        tokio::select! {
            r = &mut search, if searching => {
                searching = false;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => last = StepError::Other(format!("SSDP search: {e:#}")),
                    Err(_) => last = StepError::Timeout(SEARCH_TIMEOUT),
                }
            }
            answer = rx.recv() => {
                let Some(r) = answer else { return Err(last) };
                if !seen.insert(r.location.to_string()) {
                    continue;
                }
                match describe(&r, peer_addr).await {
                    Ok(gw) => return Ok(gw),
                    Err(e) => {
                        tracing::debug!(location = %r.location, error = %e, "UPnP: not a usable gateway");
                        last = e;
                    }
                }
            }
        }
    }
}

async fn describe(
    r: &librqbit_upnp::UpnpDiscoverResponse,
    peer_addr: SocketAddr,
) -> Result<Gateway, StepError> {
    let desc = tokio::time::timeout(
        STEP_TIMEOUT,
        librqbit_upnp::discover_services(r.location.clone()),
    )
    .await
    .map_err(|_| StepError::Timeout(STEP_TIMEOUT))?
    .map_err(|e| StepError::Other(format!("device description: {e:#}")))?;
    let svc = desc
        .devices
        .iter()
        .flat_map(|d| d.iter_services(tracing::Span::none()))
        .map(|(_, s)| s)
        .find(|s| igd::WAN_SERVICES.contains(&s.service_type.as_str()))
        .ok_or_else(|| StepError::Other("no WAN connection service".into()))?;
    let control = r
        .location
        .join(&svc.control_url)
        .map_err(|e| StepError::Other(format!("control URL: {e}")))?;
    let local_ip = local_ip_toward(r.received_from, peer_addr)
        .ok_or_else(|| StepError::Other("no local address toward the gateway".into()))?;
    Ok(Gateway {
        control: control.to_string(),
        service: svc.service_type.clone(),
        local_ip,
    })
}

async fn call(http: &reqwest::Client, control: &str, a: Action) -> Result<String, StepError> {
    let req = http
        .post(control)
        .header("Content-Type", "text/xml; charset=\"utf-8\"")
        .header("SOAPAction", a.soap_action)
        .body(a.body)
        .send();
    let resp = tokio::time::timeout(STEP_TIMEOUT, req)
        .await
        .map_err(|_| StepError::Timeout(STEP_TIMEOUT))??;
    let text = tokio::time::timeout(STEP_TIMEOUT, resp.text())
        .await
        .map_err(|_| StepError::Timeout(STEP_TIMEOUT))??;
    Ok(text.chars().take(64 * 1024).collect())
}

/// Maps `external` (TCP and UDP) to our `internal` port; on a conflict
/// tries the next few external ports. Returns the external port mapped.
async fn map(
    http: &reqwest::Client,
    gw: &Gateway,
    internal: u16,
    external: u16,
    lease: Duration,
) -> Result<u16, StepError> {
    let mut ext = external;
    let mut lease_secs = lease.as_secs();
    let mut tries = 0;
    loop {
        let mut result = Ok(());
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = igd::add_port_mapping(
                &gw.service,
                proto,
                ext,
                gw.local_ip,
                internal,
                lease_secs,
                DESCRIPTION,
            );
            let r = call(http, &gw.control, a)
                .await
                .and_then(|x| igd::parse_ok(&x).map_err(StepError::from));
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => return Ok(ext),
            Err(StepError::Igd(e)) if igd::wants_permanent_lease(&e) && lease_secs != 0 => {
                lease_secs = 0;
            }
            Err(StepError::Igd(e)) if igd::is_conflict(&e) && tries < CONFLICT_TRIES => {
                tries += 1;
                ext = ext.checked_add(1).unwrap_or(1024);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn external_ip(http: &reqwest::Client, gw: &Gateway) -> Result<IpAddr, StepError> {
    let text = call(http, &gw.control, igd::get_external_ip(&gw.service)).await?;
    Ok(igd::parse_external_ip(&text)?)
}

/// Whether the port mapper runs by default: not for a loopback peer
/// address (tests, a daemon kept on one machine).
pub fn default_on(peer_addr: SocketAddr) -> bool {
    !peer_addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_schedule() {
        let cases = [(0, 1800), (1, 5), (10, 5), (60, 30), (1800, 900)];
        for (lease, want) in cases {
            assert_eq!(
                renew_after(Duration::from_secs(lease)),
                Duration::from_secs(want),
                "{lease}"
            );
        }
    }

    #[test]
    fn on_by_default_unless_loopback() {
        let cases = [
            ("0.0.0.0:6881", true),
            ("192.168.1.5:6881", true),
            ("127.0.0.1:6881", false),
            ("127.0.0.23:1", false),
            ("[::1]:6881", false),
            ("[::]:6881", true),
        ];
        for (a, want) in cases {
            assert_eq!(default_on(a.parse().unwrap()), want, "{a}");
        }
    }

    #[test]
    fn local_ip_prefers_the_peer_address() {
        let gw: SocketAddr = "127.0.0.1:1900".parse().unwrap();
        assert_eq!(
            local_ip_toward(gw, "10.1.2.3:6881".parse().unwrap()),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(
            local_ip_toward(gw, "0.0.0.0:6881".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
