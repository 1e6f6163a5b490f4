//! A minimal DNS stub client for the demo's probes: one A query over UDP
//! (RFC 1035), so a pod resolves `<service>.<namespace>.svc.cluster.local`
//! through the cluster DNS Service the way its resolver would, without a
//! resolver library or `/etc/resolv.conf`.
//!
//! Contract: [`encode_query`] builds a standard query (RFC 1035 §4.1.1:
//! one question, RD set); [`parse_a_answers`] accepts only the response to
//! that query (same ID, QR set, the same question) and returns the IPv4
//! addresses of its A records for the queried name, following compression
//! pointers (§4.1.4) with a bound on their number. Every read is checked:
//! a malformed response is an error, never a panic.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Errors of the stub client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("invalid name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("response truncated at byte {at}")]
    Truncated { at: usize },
    #[error("response ID {got:#06x} does not match query ID {want:#06x}")]
    IdMismatch { got: u16, want: u16 },
    #[error("not a response (QR bit clear)")]
    NotResponse,
    #[error("server answered rcode {rcode} ({})", rcode_name(*.rcode))]
    Rcode { rcode: u8 },
    #[error("response does not repeat the question")]
    QuestionMismatch,
    #[error("compression pointer loop or name too long")]
    BadPointer,
    #[error("no A record for {name}")]
    NoAnswer { name: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
}

fn rcode_name(rcode: u8) -> &'static str {
    // RFC 1035 §4.1.1.
    match rcode {
        1 => "format error",
        2 => "server failure",
        3 => "name error: no such name",
        4 => "not implemented",
        5 => "refused",
        _ => "unknown",
    }
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// RFC 1035 §2.3.4.
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 255;
/// Bounds the work of following compression pointers.
const MAX_POINTERS: usize = 32;

/// A standard query for the A records of `name` (RFC 1035 §4.1.1: QR=0,
/// OPCODE=0, RD=1, one question of QTYPE A, QCLASS IN).
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut msg = Vec::with_capacity(18 + name.len());
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    encode_name(name, &mut msg)?;
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let bad = |why| DnsError::BadName {
        name: name.to_owned(),
        why,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let start = out.len();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(bad("label longer than 63 bytes"));
        }
        // Guarded by the length check just above.
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - start > MAX_NAME {
        return Err(bad("longer than 255 bytes"));
    }
    Ok(())
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    msg.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Truncated { at })
}

/// Reads the (possibly compressed) name at `at`; returns it lower-cased
/// without the trailing dot, and the offset just past it in the message.
fn read_name(msg: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = at;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated { at: pos })?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(DnsError::Truncated { at: pos + 1 })?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                if name.len() > MAX_NAME {
                    return Err(DnsError::BadPointer);
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                // RFC 1035 §4.1.4: a pointer is two bytes, 14-bit offset.
                let target = usize::from(u16_at(msg, pos)? & 0x3fff);
                end.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return Err(DnsError::BadPointer);
                }
                pos = target;
            }
            // 0x40 and 0x80 are reserved (RFC 6891 retired EDNS labels).
            _ => return Err(DnsError::BadPointer),
        }
    }
}

/// The IPv4 addresses of the A records for `name` in `msg`, the response
/// to the query `id` for `name`. CNAME chains are not followed (the demo's
/// DNS answers Service names with A records directly).
pub fn parse_a_answers(msg: &[u8], id: u16, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
    let got = u16_at(msg, 0)?;
    if got != id {
        return Err(DnsError::IdMismatch { got, want: id });
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    // The mask keeps 4 bits: fits u8.
    let rcode = (flags & 0x000f) as u8;
    if rcode != 0 {
        return Err(DnsError::Rcode { rcode });
    }
    let qdcount = u16_at(msg, 4)?;
    let ancount = u16_at(msg, 6)?;
    let want = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if qdcount != 1 {
        return Err(DnsError::QuestionMismatch);
    }
    let (qname, mut pos) = read_name(msg, 12)?;
    if qname != want || u16_at(msg, pos)? != TYPE_A || u16_at(msg, pos + 2)? != CLASS_IN {
        return Err(DnsError::QuestionMismatch);
    }
    pos += 4;
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        let (owner, next) = read_name(msg, pos)?;
        let rtype = u16_at(msg, next)?;
        let class = u16_at(msg, next + 2)?;
        let rdlen = usize::from(u16_at(msg, next + 8)?);
        let rdata = msg
            .get(next + 10..next + 10 + rdlen)
            .ok_or(DnsError::Truncated { at: next + 10 })?;
        if owner == want && rtype == TYPE_A && class == CLASS_IN {
            if let [a, b, c, d] = *rdata {
                addrs.push(Ipv4Addr::new(a, b, c, d));
            }
        }
        pos = next + 10 + rdlen;
    }
    if addrs.is_empty() {
        return Err(DnsError::NoAnswer { name: want });
    }
    Ok(addrs)
}

/// Asks `server` for the A records of `name` over UDP from the calling
/// thread's network namespace: up to `tries` queries, each waiting
/// `timeout` for the answer (a resolver's retransmission, RFC 1035 §4.2.1).
pub fn resolve_a(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
    tries: u32,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| DnsError::Io {
            what,
            message: e.to_string(),
        }
    };
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(io("bind a UDP socket"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(io("set a read timeout"))?;
    sock.connect(server)
        .map_err(io(&format!("connect to {server}")))?;
    // Any ID works; vary it per process so stale answers do not match.
    let id = (std::process::id() as u16).rotate_left(5) ^ 0x6b78;
    let query = encode_query(id, name)?;
    let mut last = DnsError::Io {
        what: format!("query {server}"),
        message: "no answer".into(),
    };
    let mut buf = [0u8; 1500];
    for _ in 0..tries.max(1) {
        sock.send(&query)
            .map_err(io(&format!("send to {server}")))?;
        match sock.recv(&mut buf) {
            Ok(n) => match parse_a_answers(buf.get(..n).unwrap_or(&[]), id, name) {
                Err(DnsError::IdMismatch { .. }) => continue,
                r => return r,
            },
            Err(e) => {
                last = DnsError::Io {
                    what: format!("no answer from {server} within {timeout:?}"),
                    message: e.to_string(),
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAME: &str = "my-web-service.default.svc.cluster.local";

    /// The query in RFC 1035 wire format, written out by hand.
    fn golden_query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["my-web-service", "default", "svc", "cluster", "local"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// What a server sends back: the question echoed, then `answers`
    /// records whose owner is a pointer to the question name (offset 12).
    fn response(query: &[u8], rcode: u8, answers: &[[u8; 4]]) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] = 0x81; // QR, RD
        r[3] = 0x80 | rcode; // RA
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for a in answers {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(a);
        }
        r
    }

    #[test]
    fn query_matches_rfc1035_layout() {
        assert_eq!(encode_query(0x1234, NAME).unwrap(), golden_query());
        assert_eq!(
            encode_query(0x1234, &format!("{NAME}.")).unwrap(),
            golden_query()
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(encode_query(1, &long).is_err());
    }

    #[test]
    fn a_records_through_compression_pointers() {
        let r = response(&golden_query(), 0, &[[10, 96, 0, 10], [10, 96, 0, 11]]);
        assert_eq!(
            parse_a_answers(&r, 0x1234, NAME).unwrap(),
            vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11)]
        );
        // Case does not matter (RFC 4343).
        assert_eq!(
            parse_a_answers(&r, 0x1234, &NAME.to_uppercase())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn errors_are_reported() {
        let q = golden_query();
        assert_eq!(
            parse_a_answers(&response(&q, 3, &[]), 0x1234, NAME),
            Err(DnsError::Rcode { rcode: 3 })
        );
        assert_eq!(
            parse_a_answers(&response(&q, 0, &[]), 0x1234, NAME),
            Err(DnsError::NoAnswer { name: NAME.into() })
        );
        assert!(matches!(
            parse_a_answers(&response(&q, 0, &[[1, 2, 3, 4]]), 0x4321, NAME),
            Err(DnsError::IdMismatch { .. })
        ));
        assert_eq!(
            parse_a_answers(&q, 0x1234, NAME),
            Err(DnsError::NotResponse)
        );
        assert_eq!(
            parse_a_answers(&response(&q, 0, &[[1, 2, 3, 4]]), 0x1234, "db.default.svc"),
            Err(DnsError::QuestionMismatch)
        );
        // A pointer to itself.
        let mut r = response(&q, 0, &[[1, 2, 3, 4]]);
        let at = q.len();
        r[at] = 0xc0;
        r[at + 1] = at as u8;
        assert_eq!(parse_a_answers(&r, 0x1234, NAME), Err(DnsError::BadPointer));
    }

    proptest! {
        /// Truncating a valid response anywhere is an error, never a panic
        /// (an answer cut inside its record is not silently accepted).
        #[test]
        fn truncated_responses_fail(cut in 0usize..100) {
            let r = response(&golden_query(), 0, &[[10, 96, 0, 10]]);
            let cut = cut % r.len();
            prop_assert!(parse_a_answers(&r[..cut], 0x1234, NAME).is_err());
        }

        /// Arbitrary bytes after a valid header never panic the parser.
        #[test]
        fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0];
            r.extend_from_slice(&tail);
            let _ = parse_a_answers(&r, 0x1234, NAME);
        }

        /// Any valid name round-trips through query and response.
        #[test]
        fn names_round_trip(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6),
                            ip in any::<[u8; 4]>()) {
            let name = labels.join(".");
            let q = encode_query(7, &name).unwrap();
            let r = response(&q, 0, &[ip]);
            prop_assert_eq!(parse_a_answers(&r, 7, &name).unwrap(), vec![Ipv4Addr::from(ip)]);
        }
    }
}
