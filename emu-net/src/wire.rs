//! Building the frames the stack answers with itself (ARP, and UDP for DHCP, DNS and the
//! relay), with smoltcp's `wire` module.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

/// Length of an Ethernet header.
pub(crate) const ETH_HEADER_LEN: usize = 14;
/// Length of an IPv4 header without options (what smoltcp emits).
const IPV4_HEADER_LEN: usize = 20;
/// Length of a UDP header.
const UDP_HEADER_LEN: usize = 8;
/// Largest UDP payload that fits an unfragmented 1500-byte IP packet.
pub(crate) const MAX_UDP_PAYLOAD: usize = 1500 - IPV4_HEADER_LEN - UDP_HEADER_LEN;

/// An Ethernet header for an IPv4 frame from `src` to `dst`, followed by `ip_len` zero bytes
/// for the caller to fill.
pub(crate) fn ethernet_ipv4(src: EthernetAddress, dst: EthernetAddress, ip_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER_LEN + ip_len];
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    buf
}

/// A UDP datagram in an IPv4 packet in an Ethernet frame, with correct checksums.
/// `payload` longer than [`MAX_UDP_PAYLOAD`] is the caller's mistake and is cut.
pub(crate) fn udp_frame(
    eth: (EthernetAddress, EthernetAddress),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_UDP_PAYLOAD)];
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let mut buf = ethernet_ipv4(eth.0, eth.1, IPV4_HEADER_LEN + udp_len);
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// Computes the TCP checksum of an IPv4 packet carrying TCP; anything else is left alone.
pub(crate) fn fill_tcp_checksum(ip: &mut [u8]) {
    let Ok(mut packet) = Ipv4Packet::new_checked(&mut ip[..]) else {
        return;
    };
    if packet.next_header() != IpProtocol::Tcp {
        return;
    }
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    if let Ok(mut tcp) = TcpPacket::new_checked(packet.payload_mut()) {
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    }
}

/// The reply to an ARP request for `target`, from `mac` to the asker, as an Ethernet frame.
pub(crate) fn arp_reply(mac: EthernetAddress, request: &ArpRepr) -> Option<Vec<u8>> {
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = *request
    else {
        return None;
    };
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut buf = vec![0u8; ETH_HEADER_LEN + reply.buffer_len()];
    EthernetRepr {
        src_addr: mac,
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    reply.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_HEADER_LEN..]));
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_parse_back_with_valid_checksums() {
        let a = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let b = EthernetAddress([2, 0, 0, 0, 0, 2]);
        let src = (Ipv4Addr::new(10, 0, 2, 3), 53);
        let dst = (Ipv4Addr::new(10, 0, 2, 15), 40000);
        let f = udp_frame((a, b), src, dst, b"answer");
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.src_addr(), a);
        assert_eq!(eth.dst_addr(), b);
        let caps = ChecksumCapabilities::default();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = Ipv4Repr::parse(&ip, &caps).unwrap();
        assert_eq!((ip_repr.src_addr, ip_repr.dst_addr), (src.0, dst.0));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        let repr = UdpRepr::parse(
            &udp,
            &IpAddress::Ipv4(src.0),
            &IpAddress::Ipv4(dst.0),
            &caps,
        )
        .unwrap();
        assert_eq!((repr.src_port, repr.dst_port), (53, 40000));
        assert_eq!(udp.payload(), b"answer");
    }
}
