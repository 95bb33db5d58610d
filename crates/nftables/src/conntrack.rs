//! UDP conntrack cleanup, as kube-proxy's: when a UDP endpoint goes away, conntrack entries
//! that still lead to it are deleted, or clients that reuse their source port (DNS resolvers)
//! keep sending into the void until the entry times out. Policy here is pure; the dump and the
//! deletes go over the backend's netlink socket (ctnetlink).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftproxy_model::{NodeContext, Protocol, ResolvedServicePort};

/// The parts of a conntrack entry the cleanup looks at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CtEntry {
    pub proto: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    /// Where replies come from: the endpoint, when the flow was DNATed.
    pub reply_src: IpAddr,
}

/// For every UDP frontend, the endpoint addresses that may answer it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpEndpoints {
    by_frontend: BTreeMap<(IpAddr, u16), BTreeSet<IpAddr>>,
    by_node_port: BTreeMap<u16, BTreeSet<IpAddr>>,
    node_ips: BTreeSet<IpAddr>,
}

impl UdpEndpoints {
    pub fn new(ports: &[ResolvedServicePort], ctx: &NodeContext) -> UdpEndpoints {
        let mut u = UdpEndpoints { node_ips: ctx.node_ips.iter().copied().collect(), ..Default::default() };
        for p in ports.iter().filter(|p| p.protocol == Protocol::Udp) {
            // Any serving endpoint counts, whatever the traffic policy (as kube-proxy).
            let eps: BTreeSet<IpAddr> = p
                .cluster_endpoints
                .iter()
                .chain(&p.local_endpoints)
                .chain(p.internal.endpoints())
                .map(|e| e.ip)
                .collect();
            let eps = if let Some(ext) = &p.external {
                eps.into_iter().chain(ext.endpoints().iter().map(|e| e.ip)).collect()
            } else {
                eps
            };
            for ip in std::iter::once(&p.cluster_ip).chain(&p.external_ips).chain(&p.load_balancer_ips) {
                u.by_frontend.entry((*ip, p.port)).or_default().extend(eps.iter().copied());
            }
            if let Some(np) = p.node_port {
                u.by_node_port.entry(np).or_default().extend(eps.iter().copied());
            }
        }
        u
    }

    /// Adds another index (of other Services) to this one.
    pub fn merge(&mut self, other: &UdpEndpoints) {
        for (k, v) in &other.by_frontend {
            self.by_frontend.entry(*k).or_default().extend(v.iter().copied());
        }
        for (k, v) in &other.by_node_port {
            self.by_node_port.entry(*k).or_default().extend(v.iter().copied());
        }
        self.node_ips.extend(other.node_ips.iter().copied());
    }

    /// Whether some frontend lost an endpoint between `self` (before) and `now`: only then is a
    /// conntrack dump worth its cost.
    pub fn lost_endpoints(&self, now: &UdpEndpoints) -> bool {
        let lost = |old: &BTreeSet<IpAddr>, new: Option<&BTreeSet<IpAddr>>| new.is_none_or(|n| !old.is_subset(n));
        self.by_frontend.iter().any(|(k, v)| lost(v, now.by_frontend.get(k)))
            || self.by_node_port.iter().any(|(k, v)| lost(v, now.by_node_port.get(k)))
    }

    /// A UDP entry to a service frontend whose replies come from an address that is no longer
    /// one of its endpoints.
    pub fn is_stale(&self, e: &CtEntry) -> bool {
        if e.proto != 17 {
            return false;
        }
        if let Some(eps) = self.by_frontend.get(&(e.orig_dst, e.orig_dport)) {
            return !eps.contains(&e.reply_src);
        }
        if self.node_ips.contains(&e.orig_dst)
            && let Some(eps) = self.by_node_port.get(&e.orig_dport)
        {
            return !eps.contains(&e.reply_src);
        }
        false
    }
}

// ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
pub(crate) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
pub(crate) const IPCTNL_MSG_CT_NEW: u16 = 0;
pub(crate) const IPCTNL_MSG_CT_GET: u16 = 1;
pub(crate) const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let item = (ty, &b[4..len]);
        b = &b[((len + 3) & !3).min(b.len())..];
        Some(item)
    })
}

#[derive(Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn tuple(b: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, v) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v) in attrs(v) {
                    let ip = match (ty, v.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => IpAddr::from(<[u8; 4]>::try_from(v).unwrap()),
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => IpAddr::from(<[u8; 16]>::try_from(v).unwrap()),
                        _ => continue,
                    };
                    if ty == CTA_IP_V4_SRC || ty == CTA_IP_V6_SRC {
                        t.src = Some(ip);
                    } else {
                        t.dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v) in attrs(v) {
                    match (ty, v.len()) {
                        (CTA_PROTO_NUM, 1) => t.proto = Some(v[0]),
                        (CTA_PROTO_SRC_PORT, 2) => t.sport = Some(u16::from_be_bytes([v[0], v[1]])),
                        (CTA_PROTO_DST_PORT, 2) => t.dport = Some(u16::from_be_bytes([v[0], v[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Parses one IPCTNL_MSG_CT_NEW payload (after the nlmsghdr).
pub(crate) fn parse_entry(payload: &[u8]) -> Option<CtEntry> {
    let body = payload.get(4..)?;
    let (mut orig, mut reply) = (None, None);
    for (ty, v) in attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => orig = Some(tuple(v)),
            CTA_TUPLE_REPLY => reply = Some(tuple(v)),
            _ => {}
        }
    }
    let (o, r) = (orig?, reply?);
    Some(CtEntry {
        proto: o.proto?,
        orig_src: o.src?,
        orig_dst: o.dst?,
        orig_sport: o.sport.unwrap_or(0),
        orig_dport: o.dport.unwrap_or(0),
        reply_src: r.src?,
    })
}

fn put(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nest(buf: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | 0x8000).to_ne_bytes());
    body(buf);
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The attributes of an IPCTNL_MSG_CT_DELETE naming an entry by its original tuple.
pub(crate) fn delete_attrs(e: &CtEntry) -> Vec<u8> {
    let mut b = Vec::new();
    nest(&mut b, CTA_TUPLE_ORIG, |b| {
        nest(b, CTA_TUPLE_IP, |b| match (e.orig_src, e.orig_dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put(b, CTA_IP_V4_SRC, &s.octets());
                put(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let six = |ip: IpAddr| match ip {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                put(b, CTA_IP_V6_SRC, &six(s));
                put(b, CTA_IP_V6_DST, &six(d));
            }
        });
        nest(b, CTA_TUPLE_PROTO, |b| {
            put(b, CTA_PROTO_NUM, &[e.proto]);
            put(b, CTA_PROTO_SRC_PORT, &e.orig_sport.to_be_bytes());
            put(b, CTA_PROTO_DST_PORT, &e.orig_dport.to_be_bytes());
        });
    });
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dst: &str, dport: u16, reply_src: &str) -> CtEntry {
        CtEntry {
            proto: 17,
            orig_src: "10.0.1.2".parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            orig_sport: 40000,
            orig_dport: dport,
            reply_src: reply_src.parse().unwrap(),
        }
    }

    #[test]
    fn a_parsed_delete_names_the_same_tuple() {
        let e = entry("10.96.0.10", 53, "10.244.1.2");
        // A CT_NEW carries the same tuple layout under CTA_TUPLE_ORIG; add a reply tuple.
        let mut msg = vec![2, 0, 0, 0];
        msg.extend(delete_attrs(&e));
        let mut reply = delete_attrs(&CtEntry { orig_src: e.reply_src, orig_dst: e.orig_src, ..e.clone() });
        reply[2] = CTA_TUPLE_REPLY as u8;
        msg.extend(reply);
        assert_eq!(parse_entry(&msg), Some(e));
    }

    #[test]
    fn only_udp_entries_to_frontends_answered_by_a_gone_endpoint_are_stale() {
        let mut u = UdpEndpoints::default();
        u.by_frontend.insert(("10.96.0.10".parse().unwrap(), 53), ["10.244.2.2".parse().unwrap()].into());
        assert!(u.is_stale(&entry("10.96.0.10", 53, "10.244.1.2")));
        assert!(!u.is_stale(&entry("10.96.0.10", 53, "10.244.2.2")));
        assert!(!u.is_stale(&entry("10.96.0.11", 53, "10.244.1.2")), "not a service");
        let mut tcp = entry("10.96.0.10", 53, "10.244.1.2");
        tcp.proto = 6;
        assert!(!u.is_stale(&tcp), "TCP is left alone");
    }
}
