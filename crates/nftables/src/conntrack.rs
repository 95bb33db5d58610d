//! UDP conntrack cleanup, as kube-proxy's reconciler (pkg/proxy/conntrack/cleanup.go, v1.34):
//! after a sync that touched a UDP Service, every UDP conntrack entry whose original destination
//! is a UDP Service frontend (ClusterIP, external IP or load-balancer IP with the port; a node
//! port by its number alone) and whose replies come from an `ip:port` that is not a *serving*
//! endpoint of that Service port is deleted. Otherwise clients that reuse their source port (DNS
//! resolvers) keep sending into the void until the entry times out. "Serving" ignores traffic
//! policy, topology and termination, so live flows to a terminating or topology-excluded
//! endpoint are never cut; a Service port with no serving endpoint is left alone. Policy here is
//! pure; the dump and the deletes go over a netfilter socket (ctnetlink).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftproxy_model::{ClusterState, IpFamily, Protocol, ServiceName, ServicePortName};
use nftproxy_nft_wire::NfFamily;
use nftproxy_nft_wire::netlink::{Writer, attrs};

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
    pub reply_sport: u16,
}

/// For every UDP frontend, the serving endpoints (`ip`, `port`) that may answer it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpServing {
    by_frontend: BTreeMap<(IpAddr, u16), BTreeSet<(IpAddr, u16)>>,
    by_node_port: BTreeMap<u16, BTreeSet<(IpAddr, u16)>>,
}

impl UdpServing {
    /// The index of every UDP Service port of the cluster, both families.
    pub fn new(state: &ClusterState) -> UdpServing {
        let mut u = UdpServing::default();
        for svc in state.services.values() {
            for family in [IpFamily::V4, IpFamily::V6] {
                let Some(cluster_ip) = svc.cluster_ips.iter().find(|ip| family.matches(ip)) else { continue };
                for port in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
                    let name =
                        ServicePortName { service: svc.name.clone(), port: port.name.clone(), protocol: port.protocol };
                    let eps: BTreeSet<(IpAddr, u16)> = state
                        .endpoints_for(&name, family)
                        .into_iter()
                        .filter(|m| m.endpoint.serving)
                        .map(|m| (m.endpoint.address, m.port))
                        .collect();
                    if eps.is_empty() {
                        continue;
                    }
                    let frontends = std::iter::once(cluster_ip)
                        .chain(&svc.external_ips)
                        .chain(&svc.load_balancer_ips)
                        .filter(|ip| family.matches(ip));
                    for ip in frontends {
                        u.by_frontend.entry((*ip, port.port)).or_default().extend(eps.iter().copied());
                    }
                    if let Some(np) = port.node_port {
                        u.by_node_port.entry(np).or_default().extend(eps.iter().copied());
                    }
                }
            }
        }
        u
    }

    /// A UDP entry to a service frontend whose replies come from an `ip:port` that is not a
    /// serving endpoint of it.
    pub fn is_stale(&self, e: &CtEntry) -> bool {
        if e.proto != 17 {
            return false;
        }
        let reply = (e.reply_src, e.reply_sport);
        if let Some(eps) = self.by_frontend.get(&(e.orig_dst, e.orig_dport)) {
            return !eps.contains(&reply);
        }
        // kube-proxy matches node ports by the port alone, whatever the destination address.
        if let Some(eps) = self.by_node_port.get(&e.orig_dport) {
            return !eps.contains(&reply);
        }
        false
    }
}

fn has_udp(s: &nftproxy_model::Service) -> bool {
    s.ports.iter().any(|p| p.protocol == Protocol::Udp)
}

/// The Services that have a UDP port, as last synced: kube-proxy's `ConntrackCleanupRequired` —
/// a sync that touched a Service with a UDP port before or after the change runs the reconciler
/// (a full sync touches every Service). Shared by both modes.
#[derive(Clone, Debug, Default)]
pub struct UdpServices {
    with_udp: BTreeSet<ServiceName>,
    /// The last cleanup failed: the next sync runs it whatever it touched.
    retry: bool,
}

impl UdpServices {
    /// Records a sync of `changed` Services (all of them when None); returns whether the
    /// reconciler must run.
    pub fn synced(&mut self, state: &ClusterState, changed: Option<&BTreeSet<ServiceName>>) -> bool {
        let retry = std::mem::take(&mut self.retry);
        retry || self.record(state, changed)
    }

    /// The cleanup that [`UdpServices::synced`] asked for failed: the next sync retries it.
    pub fn failed(&mut self) {
        self.retry = true;
    }

    fn record(&mut self, state: &ClusterState, changed: Option<&BTreeSet<ServiceName>>) -> bool {
        match changed {
            None => {
                let now: BTreeSet<ServiceName> =
                    state.services.values().filter(|s| has_udp(s)).map(|s| s.name.clone()).collect();
                let required = !now.is_empty() || !self.with_udp.is_empty();
                self.with_udp = now;
                required
            }
            Some(changed) => {
                let mut required = false;
                for svc in changed {
                    let udp_now = state.services.get(svc).is_some_and(has_udp);
                    required |= udp_now || self.with_udp.contains(svc);
                    if udp_now {
                        self.with_udp.insert(svc.clone());
                    } else {
                        self.with_udp.remove(svc);
                    }
                }
                required
            }
        }
    }
}

/// The two ctnetlink operations the reconciler needs. The kernel's socket implements them; unit
/// tests use a fake that fails on demand (ctnetlink errors cannot be provoked in a test namespace:
/// the conntrack table size is a host-wide setting).
pub trait ConntrackTable {
    /// Every conntrack entry of a family (NFPROTO_IPV4 or NFPROTO_IPV6).
    fn dump(&mut self, family: NfFamily) -> std::io::Result<Vec<CtEntry>>;
    /// Deletes one entry by its original tuple; one already gone is not an error.
    fn delete(&mut self, e: &CtEntry) -> std::io::Result<()>;
}

impl ConntrackTable for crate::netlink::NftSocket {
    fn dump(&mut self, family: NfFamily) -> std::io::Result<Vec<CtEntry>> {
        self.conntrack_dump(family)
    }
    fn delete(&mut self, e: &CtEntry) -> std::io::Result<()> {
        self.conntrack_delete(e)
    }
}

/// What one run of the reconciler did. Like kube-proxy's, a failed dump or delete never fails
/// the sync: the rules are what matter, the cleanup is retried by the next sync (see
/// [`UdpServices::failed`]).
#[derive(Debug, Default)]
pub struct Cleanup {
    pub deleted: usize,
    /// The first error (later deletes are still attempted after a failed one).
    pub error: Option<String>,
}

/// Dumps both families' conntrack tables and deletes the stale UDP entries.
pub fn reconcile(ct: &mut impl ConntrackTable, state: &ClusterState) -> Cleanup {
    let index = UdpServing::new(state);
    let mut out = Cleanup::default();
    for (family, word) in [(NfFamily::Ip, "IPv4"), (NfFamily::Ip6, "IPv6")] {
        let entries = match ct.dump(family) {
            Ok(e) => e,
            Err(e) => {
                out.error.get_or_insert(format!("listing {word} conntrack entries: {e}"));
                continue;
            }
        };
        for e in entries.iter().filter(|e| index.is_stale(e)) {
            match ct.delete(e) {
                Ok(()) => out.deleted += 1,
                Err(err) => {
                    out.error.get_or_insert(format!(
                        "deleting the UDP entry {}:{} -> {}:{}: {err}",
                        e.orig_src, e.orig_sport, e.orig_dst, e.orig_dport
                    ));
                }
            }
        }
    }
    out
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
        reply_sport: r.sport.unwrap_or(0),
    })
}

/// The attributes of an IPCTNL_MSG_CT_DELETE naming an entry by its original tuple.
pub(crate) fn delete_attrs(e: &CtEntry) -> Vec<u8> {
    let mut w = Writer::default();
    let orig = w.nest(CTA_TUPLE_ORIG);
    let ip = w.nest(CTA_TUPLE_IP);
    match (e.orig_src, e.orig_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.bytes(CTA_IP_V4_SRC, &s.octets());
            w.bytes(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            w.bytes(CTA_IP_V6_SRC, &six(s));
            w.bytes(CTA_IP_V6_DST, &six(d));
        }
    }
    w.end(ip);
    let proto = w.nest(CTA_TUPLE_PROTO);
    w.bytes(CTA_PROTO_NUM, &[e.proto]);
    w.bytes(CTA_PROTO_SRC_PORT, &e.orig_sport.to_be_bytes());
    w.bytes(CTA_PROTO_DST_PORT, &e.orig_dport.to_be_bytes());
    w.end(proto);
    w.end(orig);
    w.into_bytes()
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
            reply_sport: 53,
        }
    }

    #[test]
    fn a_parsed_delete_names_the_same_tuple() {
        let e = entry("10.96.0.10", 53, "10.244.1.2");
        // A CT_NEW carries the same tuple layout under CTA_TUPLE_ORIG; add a reply tuple.
        let mut msg = vec![2, 0, 0, 0];
        msg.extend(delete_attrs(&e));
        let mut reply = delete_attrs(&CtEntry {
            orig_src: e.reply_src,
            orig_dst: e.orig_src,
            orig_sport: e.reply_sport,
            orig_dport: e.orig_sport,
            ..e.clone()
        });
        reply[2] = CTA_TUPLE_REPLY as u8;
        msg.extend(reply);
        assert_eq!(parse_entry(&msg), Some(e));
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: ns}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.10]
  internalTrafficPolicy: Local
  ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}, {name: tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec: {clusterIP: 10.96.0.11, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: ns, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints:
- {addresses: [10.244.2.2], nodeName: node-b}
- {addresses: [10.244.3.3], nodeName: node-c, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.4.4], nodeName: node-d, conditions: {ready: false, serving: false}}
ports: [{name: dns, port: 5353, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-1, namespace: ns, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
endpoints: [{addresses: [10.244.5.5], conditions: {ready: false, serving: false}}]
ports: [{name: dns, port: 5353, protocol: UDP}]
"#;

    fn with_reply(mut e: CtEntry, sport: u16) -> CtEntry {
        e.reply_sport = sport;
        e
    }

    #[test]
    fn stale_means_not_a_serving_endpoint_of_that_frontend() {
        let mut l = nftproxy_manifest::Loaded::default();
        l.add_text("t", CLUSTER);
        let u = UdpServing::new(&l.state);
        // Serving endpoints stay, whatever the traffic policy (ITP=Local here, none on this
        // node) and even when terminating.
        assert!(!u.is_stale(&with_reply(entry("10.96.0.10", 53, "10.244.2.2"), 5353)));
        assert!(!u.is_stale(&with_reply(entry("10.96.0.10", 53, "10.244.3.3"), 5353)), "serving-terminating");
        assert!(u.is_stale(&with_reply(entry("10.96.0.10", 53, "10.244.4.4"), 5353)), "not serving");
        assert!(u.is_stale(&with_reply(entry("10.96.0.10", 53, "10.244.2.2"), 9999)), "right IP, wrong port");
        assert!(u.is_stale(&with_reply(entry("10.96.0.10", 53, "10.244.9.9"), 5353)), "gone");
        assert!(u.is_stale(&with_reply(entry("192.0.2.10", 53, "10.244.9.9"), 5353)), "external IP");
        // Node ports by number, whatever the destination.
        assert!(u.is_stale(&with_reply(entry("198.51.100.1", 30053, "10.244.9.9"), 5353)));
        assert!(!u.is_stale(&with_reply(entry("198.51.100.1", 30053, "10.244.2.2"), 5353)));
        // Not a frontend; a port with no serving endpoint; TCP: left alone.
        assert!(!u.is_stale(&with_reply(entry("10.96.0.12", 53, "10.244.9.9"), 5353)));
        assert!(!u.is_stale(&with_reply(entry("10.96.0.11", 53, "10.244.9.9"), 5353)), "no serving endpoint");
        let mut tcp = with_reply(entry("10.96.0.10", 53, "10.244.9.9"), 5353);
        tcp.proto = 6;
        assert!(!u.is_stale(&tcp), "TCP is left alone");
        let mut t = UdpServices::default();
        assert!(t.synced(&l.state, None));
        assert_eq!(t.with_udp.len(), 2);
    }

    /// A conntrack table that fails on demand: ctnetlink errors (a table too big to dump, a
    /// delete refused) cannot be provoked in a test namespace.
    struct FlakyTable {
        entries: Vec<CtEntry>,
        dump_fails: bool,
        refuse_delete_of: Option<IpAddr>,
        deleted: Vec<CtEntry>,
    }

    impl ConntrackTable for FlakyTable {
        fn dump(&mut self, family: NfFamily) -> std::io::Result<Vec<CtEntry>> {
            if self.dump_fails {
                return Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
            }
            Ok(self.entries.iter().filter(|e| e.orig_src.is_ipv4() == (family == NfFamily::Ip)).cloned().collect())
        }
        fn delete(&mut self, e: &CtEntry) -> std::io::Result<()> {
            if Some(e.reply_src) == self.refuse_delete_of {
                return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
            }
            self.deleted.push(e.clone());
            Ok(())
        }
    }

    #[test]
    fn a_failed_cleanup_is_reported_not_fatal_and_retried_by_the_next_sync() {
        let mut l = nftproxy_manifest::Loaded::default();
        l.add_text("t", CLUSTER);
        let stale_a = with_reply(entry("10.96.0.10", 53, "10.244.9.9"), 5353);
        let stale_b = with_reply(entry("10.96.0.10", 53, "10.244.8.8"), 5353);
        let live = with_reply(entry("10.96.0.10", 53, "10.244.2.2"), 5353);
        let mut table = FlakyTable {
            entries: vec![stale_a.clone(), live, stale_b.clone()],
            dump_fails: true,
            refuse_delete_of: None,
            deleted: vec![],
        };
        let mut udp = UdpServices::default();
        assert!(udp.synced(&l.state, None));
        let out = reconcile(&mut table, &l.state);
        assert_eq!(out.deleted, 0);
        assert!(out.error.as_deref().unwrap().contains("listing IPv4 conntrack entries"), "{out:?}");
        udp.failed();
        // A sync that touches no UDP Service still runs the cleanup once, because it failed.
        let untouched = BTreeSet::new();
        assert!(udp.synced(&l.state, Some(&untouched)), "retried");
        // One delete refused: the others still go, the first error is named.
        table.dump_fails = false;
        table.refuse_delete_of = Some("10.244.9.9".parse().unwrap());
        let out = reconcile(&mut table, &l.state);
        assert_eq!((out.deleted, table.deleted.clone()), (1, vec![stale_b]));
        assert!(out.error.as_deref().unwrap().contains("10.96.0.10:53"), "{out:?}");
        udp.failed();
        assert!(udp.synced(&l.state, Some(&untouched)));
        table.refuse_delete_of = None;
        let out = reconcile(&mut table, &l.state);
        assert_eq!((out.deleted, out.error), (2, None));
        // Succeeded: no more runs for syncs that touch no UDP Service.
        assert!(!udp.synced(&l.state, Some(&untouched)));
    }
}
