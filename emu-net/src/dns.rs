//! The DNS server at 10.0.2.3: queries are parsed here, A and AAAA names are resolved by the
//! host's resolver (`getaddrinfo`, through `std::net::ToSocketAddrs`) on a helper thread,
//! and the answer is built here (RFC 1035 message format).

use std::net::{IpAddr, ToSocketAddrs};

/// DNS port.
pub(crate) const PORT: u16 = 53;
/// Record type A (IPv4 address).
const TYPE_A: u16 = 1;
/// Record type AAAA (IPv6 address).
const TYPE_AAAA: u16 = 28;
/// Class IN.
const CLASS_IN: u16 = 1;
/// Time to live of answers, in seconds: short, the host's resolver caches.
const TTL: u32 = 60;
/// Most answers in one reply (a UDP reply stays well under 512 bytes).
const MAX_ANSWERS: usize = 8;

/// Response codes.
mod rcode {
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
}

/// A query the server understood well enough to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    id: u16,
    /// Recursion desired, echoed back.
    rd: bool,
    /// The question section as received (name, type, class), echoed back.
    question: Vec<u8>,
    /// The name, dotted, without the final dot.
    pub name: String,
    /// Record type asked for.
    pub qtype: u16,
    qclass: u16,
}

/// What to do with a message that arrived on port 53.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// A question for the host's resolver.
    Resolve(Query),
    /// Answer at once with this reply (an error).
    Reply(Vec<u8>),
    /// Not a query at all: drop it.
    Ignore,
}

/// Parses a message from the guest.
pub(crate) fn parse(msg: &[u8]) -> Request {
    if msg.len() < 12 {
        return Request::Ignore;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qr = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    let rd = flags & 0x0100 != 0;
    if qr {
        return Request::Ignore;
    }
    let error = |code| Request::Reply(header_only(id, rd, code));
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if opcode != 0 {
        return error(rcode::NOTIMP);
    }
    if qdcount != 1 {
        return error(rcode::FORMERR);
    }
    let Some((name, end)) = read_name(msg, 12) else {
        return error(rcode::FORMERR);
    };
    let Some(fixed) = msg.get(end..end + 4) else {
        return error(rcode::FORMERR);
    };
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let query = Query {
        id,
        rd,
        question: msg[12..end + 4].to_vec(),
        name,
        qtype,
        qclass,
    };
    if qclass != CLASS_IN || !matches!(qtype, TYPE_A | TYPE_AAAA) || query.name.is_empty() {
        return Request::Reply(reply(&query, rcode::NOTIMP, &[]));
    }
    Request::Resolve(query)
}

/// Reads an uncompressed name (questions are never compressed) at `at`; returns it dotted
/// and the offset after it. Labels must be printable ASCII without dots.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() + len + 1 > 253 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        if !label.iter().all(|&b| b.is_ascii_graphic() && b != b'.') {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|&b| char::from(b)));
        at += len;
    }
    Some((name, at))
}

/// A reply with only a header (for queries that could not be parsed): the question is not
/// echoed.
fn header_only(id: u16, rd: bool, code: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(12);
    r.extend_from_slice(&id.to_be_bytes());
    r.extend_from_slice(&response_flags(rd, code).to_be_bytes());
    r.extend_from_slice(&[0; 8]);
    r
}

fn response_flags(rd: bool, code: u8) -> u16 {
    // QR, recursion available, and RD echoed.
    0x8000 | 0x0080 | if rd { 0x0100 } else { 0 } | u16::from(code & 0xf)
}

/// The reply to `query` with `code` and the addresses of the asked family among `addrs`.
fn reply(query: &Query, code: u8, addrs: &[IpAddr]) -> Vec<u8> {
    let answers: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| match a {
            IpAddr::V4(_) => query.qtype == TYPE_A,
            IpAddr::V6(_) => query.qtype == TYPE_AAAA,
        })
        .take(MAX_ANSWERS)
        .collect();
    let mut r = Vec::with_capacity(12 + query.question.len() + answers.len() * 28);
    r.extend_from_slice(&query.id.to_be_bytes());
    r.extend_from_slice(&response_flags(query.rd, code).to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&query.question);
    for a in answers {
        // The name is a pointer to the question's (offset 12).
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&query.qtype.to_be_bytes());
        r.extend_from_slice(&query.qclass.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        match a {
            IpAddr::V4(v4) => {
                r.extend_from_slice(&4u16.to_be_bytes());
                r.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                r.extend_from_slice(&16u16.to_be_bytes());
                r.extend_from_slice(&v6.octets());
            }
        }
    }
    r
}

/// Resolves `query` with the host's resolver (blocking: call it on a helper thread) and
/// returns the reply.
pub(crate) fn resolve(query: &Query) -> Vec<u8> {
    match (query.name.as_str(), 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            reply(query, 0, &addrs)
        }
        Err(_) => reply(query, rcode::NXDOMAIN, &[]),
    }
}

/// The reply when the server is too busy to resolve.
pub(crate) fn busy(query: &Query) -> Vec<u8> {
    reply(query, rcode::SERVFAIL, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn rcode_of(r: &[u8]) -> u8 {
        r[3] & 0xf
    }

    #[test]
    fn localhost_resolves_through_the_hosts_resolver() {
        let Request::Resolve(q) = parse(&query("localhost", TYPE_A)) else {
            panic!("not a resolvable query");
        };
        assert_eq!(q.name, "localhost");
        let r = resolve(&q);
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(rcode_of(&r), 0);
        let ancount = u16::from_be_bytes([r[6], r[7]]);
        assert!(ancount >= 1);
        // The first answer follows the echoed question: pointer, type, class, TTL, length.
        let at = 12 + q.question.len();
        assert_eq!(&r[at..at + 2], &[0xc0, 12]);
        assert_eq!(u16::from_be_bytes([r[at + 10], r[at + 11]]), 4);
        assert_eq!(&r[at + 12..at + 16], &[127, 0, 0, 1]);
    }

    #[test]
    fn unsupported_and_malformed_queries_get_errors_or_nothing() {
        let Request::Reply(r) = parse(&query("localhost", 15)) else {
            panic!("MX should be answered at once");
        };
        assert_eq!(rcode_of(&r), rcode::NOTIMP);
        let mut two = query("a.b", TYPE_A);
        two[5] = 2;
        let Request::Reply(r) = parse(&two) else {
            panic!()
        };
        assert_eq!(rcode_of(&r), rcode::FORMERR);
        let mut cut = query("example.invalid", TYPE_A);
        cut.truncate(20);
        assert!(matches!(parse(&cut), Request::Reply(_)));
        let mut response = query("a", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse(&response), Request::Ignore);
        assert_eq!(parse(&[1, 2, 3]), Request::Ignore);
        // A compression pointer in a question is not accepted.
        let mut ptr = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        ptr.extend_from_slice(&[0, 1, 0, 1]);
        assert!(matches!(parse(&ptr), Request::Reply(_)));
        for garbage in [vec![0u8; 12], vec![0xff; 600]] {
            let _ = parse(&garbage);
        }
    }
}
