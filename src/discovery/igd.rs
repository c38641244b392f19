//! UPnP IGD SOAP calls: request bodies and answer parsing (pure: no
//! sockets, no tokio).
//!
//! `librqbit-upnp` 9.1 finds the gateway (SSDP search, device description)
//! and we use it for that, but it keeps its `AddPortMapping` private, has
//! no `DeletePortMapping` and no `GetExternalIPAddress`: the mapping could
//! be neither removed at shutdown nor shown with its external address. The
//! three actions are small fixed SOAP envelopes, built and read here.

use std::net::IpAddr;

/// The WAN connection services that carry the port-mapping actions.
pub const WAN_SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Proto {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// What went wrong with a gateway answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IgdError {
    /// A SOAP fault: UPnP error code and description.
    #[error("gateway refused: UPnP error {code} ({description})")]
    Fault { code: u32, description: String },
    /// The answer lacks the element the action returns.
    #[error("gateway answer has no <{0}>")]
    Missing(&'static str),
    /// The element is there but does not parse.
    #[error("gateway answer: bad <{0}>")]
    Bad(&'static str),
}

/// One SOAP action: the `SOAPAction` header value and the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Action {
    pub soap_action: String,
    pub body: String,
}

fn envelope(service: &str, action: &str, args: &[(&str, String)]) -> Action {
    let mut inner = String::new();
    for (k, v) in args {
        inner.push_str(&format!("<{k}>{}</{k}>", xml_escape(v)));
    }
    Action {
        soap_action: format!("\"{service}#{action}\""),
        body: format!(
            "<?xml version=\"1.0\"?>\
             <s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">\
             <s:Body><u:{action} xmlns:u=\"{service}\">{inner}</u:{action}></s:Body>\
             </s:Envelope>"
        ),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `AddPortMapping`: `external` on the gateway to `client:internal`.
pub fn add_port_mapping(
    service: &str,
    proto: Proto,
    external: u16,
    client: IpAddr,
    internal: u16,
    lease_secs: u64,
    description: &str,
) -> Action {
    envelope(
        service,
        "AddPortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", proto.name().to_string()),
            ("NewInternalPort", internal.to_string()),
            ("NewInternalClient", client.to_string()),
            ("NewEnabled", "1".to_string()),
            ("NewPortMappingDescription", description.to_string()),
            ("NewLeaseDuration", lease_secs.to_string()),
        ],
    )
}

/// `DeletePortMapping` of `external`.
pub fn delete_port_mapping(service: &str, proto: Proto, external: u16) -> Action {
    envelope(
        service,
        "DeletePortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", proto.name().to_string()),
        ],
    )
}

/// `GetExternalIPAddress`.
pub fn get_external_ip(service: &str) -> Action {
    envelope(service, "GetExternalIPAddress", &[])
}

/// The text of the first element whose local name is `name` (any
/// namespace prefix), trimmed.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let local = tag.rsplit(':').next().unwrap_or(tag);
        let local = local.trim_end_matches('/');
        if !tag.starts_with('/') && local.split_whitespace().next() == Some(name) {
            if tag.ends_with('/') {
                return Some("");
            }
            let body = &rest[end + 1..];
            let close = body.find("</")?;
            return Some(body[..close].trim());
        }
        rest = &rest[end + 1..];
    }
    None
}

/// A SOAP fault in `xml`, if any.
pub fn fault(xml: &str) -> Option<IgdError> {
    element(xml, "Fault")?;
    let code = element(xml, "errorCode")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let description = element(xml, "errorDescription")
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Some(IgdError::Fault { code, description })
}

/// The answer to `AddPortMapping` or `DeletePortMapping`: a fault or not.
pub fn parse_ok(xml: &str) -> Result<(), IgdError> {
    match fault(xml) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The answer to `GetExternalIPAddress`.
pub fn parse_external_ip(xml: &str) -> Result<IpAddr, IgdError> {
    if let Some(e) = fault(xml) {
        return Err(e);
    }
    element(xml, "NewExternalIPAddress")
        .ok_or(IgdError::Missing("NewExternalIPAddress"))?
        .parse()
        .map_err(|_| IgdError::Bad("NewExternalIPAddress"))
}

/// UPnP error 718 (ConflictInMappingEntry): the external port is mapped to
/// another client; 725 (OnlyPermanentLeasesSupported): retry with lease 0.
pub fn is_conflict(e: &IgdError) -> bool {
    matches!(e, IgdError::Fault { code: 718, .. })
}

pub fn wants_permanent_lease(e: &IgdError) -> bool {
    matches!(e, IgdError::Fault { code: 725, .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

    #[test]
    fn add_port_mapping_body_is_byte_exact() {
        let a = add_port_mapping(
            SVC,
            Proto::Tcp,
            6881,
            "192.168.1.5".parse().unwrap(),
            6881,
            1800,
            "debtorrent <peer>",
        );
        assert_eq!(
            a.soap_action,
            "\"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\""
        );
        assert_eq!(
            a.body,
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
             <u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
             <NewRemoteHost></NewRemoteHost><NewExternalPort>6881</NewExternalPort>\
             <NewProtocol>TCP</NewProtocol><NewInternalPort>6881</NewInternalPort>\
             <NewInternalClient>192.168.1.5</NewInternalClient><NewEnabled>1</NewEnabled>\
             <NewPortMappingDescription>debtorrent &lt;peer&gt;</NewPortMappingDescription>\
             <NewLeaseDuration>1800</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>"
        );
    }

    #[test]
    fn delete_and_external_ip_bodies() {
        let d = delete_port_mapping(SVC, Proto::Udp, 7000);
        assert!(d.soap_action.ends_with("#DeletePortMapping\""));
        assert!(d.body.contains(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>7000</NewExternalPort><NewProtocol>UDP</NewProtocol></u:DeletePortMapping>"
        ));
        let g = get_external_ip(SVC);
        assert!(g.body.contains(&format!(
            "<u:GetExternalIPAddress xmlns:u=\"{SVC}\"></u:GetExternalIPAddress>"
        )));
    }

    #[test]
    fn answers() {
        let ok_ip = "<?xml version=\"1.0\"?><s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"x\"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        let fault_718 = "<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        let cases: [(&str, Result<IpAddr, IgdError>); 6] = [
            (ok_ip, Ok("203.0.113.7".parse().unwrap())),
            (
                "<r><m:NewExternalIPAddress> 2001:db8::1 </m:NewExternalIPAddress></r>",
                Ok("2001:db8::1".parse().unwrap()),
            ),
            (
                fault_718,
                Err(IgdError::Fault {
                    code: 718,
                    description: "ConflictInMappingEntry".into(),
                }),
            ),
            (
                "<r><NewExternalIPAddress/></r>",
                Err(IgdError::Bad("NewExternalIPAddress")),
            ),
            (
                "garbage \u{0}<<>>",
                Err(IgdError::Missing("NewExternalIPAddress")),
            ),
            ("", Err(IgdError::Missing("NewExternalIPAddress"))),
        ];
        for (xml, want) in cases {
            assert_eq!(parse_external_ip(xml), want, "{xml}");
        }
        assert!(
            parse_ok("<s:Envelope><s:Body><u:AddPortMappingResponse/></s:Body></s:Envelope>")
                .is_ok()
        );
        let e = parse_ok(fault_718).unwrap_err();
        assert!(is_conflict(&e) && !wants_permanent_lease(&e));
        assert!(wants_permanent_lease(
            &parse_ok("<Fault><errorCode>725</errorCode></Fault>").unwrap_err()
        ));
    }
}
