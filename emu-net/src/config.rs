//! The addresses of the virtual network and the ports forwarded into it.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// The virtual network, QEMU's defaults unless changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserNetConfig {
    /// The router, which is also the host (10.0.2.2).
    pub host: Ipv4Addr,
    /// The DNS server (10.0.2.3).
    pub dns: Ipv4Addr,
    /// The address DHCP hands the guest (10.0.2.15).
    pub guest: Ipv4Addr,
    /// Length of the network prefix (24).
    pub prefix_len: u8,
    /// TCP ports forwarded from the host into the guest.
    pub host_forwards: Vec<HostForward>,
}

impl Default for UserNetConfig {
    fn default() -> Self {
        Self {
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            guest: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            host_forwards: Vec::new(),
        }
    }
}

impl UserNetConfig {
    /// The network mask.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether `addr` is inside the virtual network.
    pub fn in_network(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(addr) & mask == u32::from(self.host) & mask
    }
}

/// One `hostfwd=`: connections to a host port are proxied to a guest port (TCP only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostForward {
    /// Host address to listen on; unspecified (0.0.0.0) listens on every interface, as
    /// QEMU does when the address is left out.
    pub host_addr: Ipv4Addr,
    /// Host port to listen on.
    pub host_port: u16,
    /// Guest address to connect to; `None` is the address DHCP hands out.
    pub guest_addr: Option<Ipv4Addr>,
    /// Guest port to connect to.
    pub guest_port: u16,
}

/// A `hostfwd=` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostForwardError {
    /// Not of the form `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
    #[error("expected tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT")]
    Syntax,
    /// A protocol other than TCP.
    #[error("only tcp forwarding is supported")]
    Protocol,
    /// An address that is not an IPv4 address.
    #[error("'{0}' is not an IPv4 address")]
    Address(String),
    /// A port that is not a number in 1..=65535.
    #[error("'{0}' is not a port number (1-65535)")]
    Port(String),
}

impl FromStr for HostForward {
    type Err = HostForwardError;

    /// Parses QEMU's spelling: `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, where the
    /// protocol may be left out (`:5555-:22`, TCP) and so may the addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, guest) = s.split_once('-').ok_or(HostForwardError::Syntax)?;
        let mut hp = host.split(':');
        let (proto, haddr, hport) = match (hp.next(), hp.next(), hp.next(), hp.next()) {
            (Some(p), Some(a), Some(port), None) => (p, a, port),
            _ => return Err(HostForwardError::Syntax),
        };
        match proto {
            "" | "tcp" => {}
            "udp" => return Err(HostForwardError::Protocol),
            _ => return Err(HostForwardError::Syntax),
        }
        let (gaddr, gport) = guest.split_once(':').ok_or(HostForwardError::Syntax)?;
        let addr = |a: &str| -> Result<Option<Ipv4Addr>, HostForwardError> {
            if a.is_empty() {
                Ok(None)
            } else {
                a.parse()
                    .map(Some)
                    .map_err(|_| HostForwardError::Address(a.to_string()))
            }
        };
        let port = |p: &str| -> Result<u16, HostForwardError> {
            match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(HostForwardError::Port(p.to_string())),
            }
        };
        Ok(HostForward {
            host_addr: addr(haddr)?.unwrap_or(Ipv4Addr::UNSPECIFIED),
            host_port: port(hport)?,
            guest_addr: addr(gaddr)?,
            guest_port: port(gport)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfwd_parses_qemu_spellings() {
        let f: HostForward = "tcp::5555-:22".parse().unwrap();
        assert_eq!(
            f,
            HostForward {
                host_addr: Ipv4Addr::UNSPECIFIED,
                host_port: 5555,
                guest_addr: None,
                guest_port: 22
            }
        );
        let f: HostForward = "tcp:127.0.0.1:8080-10.0.2.15:80".parse().unwrap();
        assert_eq!(f.host_addr, Ipv4Addr::LOCALHOST);
        assert_eq!(f.guest_addr, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!("::2222-:22".parse::<HostForward>().unwrap().host_port, 2222);
        for (bad, err) in [
            ("tcp:5555-:22", HostForwardError::Syntax),
            ("tcp::5555:22", HostForwardError::Syntax),
            ("tcp::5555-22", HostForwardError::Syntax),
            ("sctp::1-:2", HostForwardError::Syntax),
            ("udp::5555-:53", HostForwardError::Protocol),
            ("tcp::0-:22", HostForwardError::Port("0".into())),
            ("tcp::65536-:22", HostForwardError::Port("65536".into())),
            ("tcp::+5-:22", HostForwardError::Port("+5".into())),
            ("tcp::5555-:", HostForwardError::Port(String::new())),
            (
                "tcp:localhost:5555-:22",
                HostForwardError::Address("localhost".into()),
            ),
            (
                "tcp::5555-10.0.2:22",
                HostForwardError::Address("10.0.2".into()),
            ),
        ] {
            assert_eq!(bad.parse::<HostForward>(), Err(err), "{bad}");
        }
    }

    #[test]
    fn the_default_network_is_qemus() {
        let c = UserNetConfig::default();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.in_network(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!c.in_network(Ipv4Addr::new(10, 0, 3, 1)));
        assert_eq!(c.guest, Ipv4Addr::new(10, 0, 2, 15));
    }
}
