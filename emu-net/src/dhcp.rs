//! The DHCP server: one guest, one address (RFC 2131, the parts a single-client network
//! needs).

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};

use crate::config::UserNetConfig;

/// Server port.
pub(crate) const SERVER_PORT: u16 = 67;
/// Client port.
pub(crate) const CLIENT_PORT: u16 = 68;
/// Lease length handed out: one day, as QEMU's slirp.
pub(crate) const LEASE_SECS: u32 = 24 * 3600;
/// DHCP option: domain name servers.
const OPT_DNS: u8 = 6;

/// Answers one client message with the reply's DHCP payload, or `None` for messages that
/// get no answer (RELEASE, DECLINE, server messages, garbage).
pub(crate) fn answer(cfg: &UserNetConfig, message: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(message).ok()?;
    let request = DhcpRepr::parse(&packet).ok()?;
    let offered = cfg.guest;
    let (kind, your_ip) = match request.message_type {
        DhcpMessageType::Discover => (DhcpMessageType::Offer, offered),
        DhcpMessageType::Request => {
            let wanted = request.requested_ip.unwrap_or(request.client_ip);
            // A REQUEST naming another server is the client choosing it: stay quiet.
            if request.server_identifier.is_some_and(|s| s != cfg.host) {
                return None;
            }
            if wanted == offered || wanted.is_unspecified() {
                (DhcpMessageType::Ack, offered)
            } else {
                (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED)
            }
        }
        DhcpMessageType::Inform => (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED),
        _ => return None,
    };
    let nak = kind == DhcpMessageType::Nak;
    let dns = cfg.dns.octets();
    let options = [DhcpOption {
        kind: OPT_DNS,
        data: &dns,
    }];
    let reply = DhcpRepr {
        message_type: kind,
        transaction_id: request.transaction_id,
        secs: 0,
        client_hardware_address: request.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip,
        server_ip: if nak { Ipv4Addr::UNSPECIFIED } else { cfg.host },
        router: (!nak).then_some(cfg.host),
        subnet_mask: (!nak).then_some(cfg.netmask()),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(cfg.host),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: (kind == DhcpMessageType::Offer
            || (kind == DhcpMessageType::Ack && !your_ip.is_unspecified()))
        .then_some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &options },
    };
    let mut payload = vec![0u8; reply.buffer_len()];
    reply
        .emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .ok()?;
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::EthernetAddress;

    const CLIENT: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn client_message(kind: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: CLIENT,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: Some(CLIENT),
            server_identifier: None,
            parameter_request_list: Some(&[1, 3, 6]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    /// What a client reads from a reply.
    struct Seen {
        kind: DhcpMessageType,
        xid: u32,
        chaddr: EthernetAddress,
        your_ip: Ipv4Addr,
        router: Option<Ipv4Addr>,
        mask: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
        lease: Option<u32>,
        dns: Vec<Ipv4Addr>,
    }

    fn parse(reply: &[u8]) -> Seen {
        let packet = DhcpPacket::new_checked(reply).unwrap();
        let r = DhcpRepr::parse(&packet).unwrap();
        Seen {
            kind: r.message_type,
            xid: r.transaction_id,
            chaddr: r.client_hardware_address,
            your_ip: r.your_ip,
            router: r.router,
            mask: r.subnet_mask,
            server: r.server_identifier,
            lease: r.lease_duration,
            dns: r.dns_servers.map(|d| d.to_vec()).unwrap_or_default(),
        }
    }

    #[test]
    fn discover_gets_an_offer_and_request_an_ack_with_router_dns_and_mask() {
        let cfg = UserNetConfig::default();
        let offer = answer(&cfg, &client_message(DhcpMessageType::Discover, None)).unwrap();
        let o = parse(&offer);
        assert_eq!(o.chaddr, CLIENT);
        assert_eq!(o.kind, DhcpMessageType::Offer);
        assert_eq!(o.xid, 0x1234_5678);
        assert_eq!(o.your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(o.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(o.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(o.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(o.lease, Some(LEASE_SECS));
        assert_eq!(o.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        let ack = answer(
            &cfg,
            &client_message(DhcpMessageType::Request, Some(cfg.guest)),
        )
        .unwrap();
        let a = parse(&ack);
        assert_eq!(a.kind, DhcpMessageType::Ack);
        assert_eq!(a.your_ip, cfg.guest);
        assert_eq!(a.router, Some(cfg.host));
    }

    #[test]
    fn other_addresses_are_refused_and_garbage_is_ignored() {
        let cfg = UserNetConfig::default();
        let nak = answer(
            &cfg,
            &client_message(DhcpMessageType::Request, Some(Ipv4Addr::new(10, 0, 2, 99))),
        )
        .unwrap();
        assert_eq!(parse(&nak).kind, DhcpMessageType::Nak);
        assert_eq!(parse(&nak).your_ip, Ipv4Addr::UNSPECIFIED);
        assert!(answer(&cfg, &client_message(DhcpMessageType::Release, None)).is_none());
        assert!(answer(&cfg, &[]).is_none());
        assert!(answer(&cfg, &[0xff; 300]).is_none());
        let mut cut = client_message(DhcpMessageType::Discover, None);
        cut.truncate(200);
        assert!(answer(&cfg, &cut).is_none());
    }
}
