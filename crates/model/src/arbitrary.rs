//! Proptest strategies for small random clusters: the one input generator of the property tests
//! of the resolver (this crate) and of the backends' renderers (which enable the
//! `proptest-support` feature as a dev-dependency), so that every backend is fuzzed with the
//! same shapes.
//!
//! Clusters are small on purpose (≤ 6 Services, ≤ 3 ports each, ≤ 2 slices of ≤ 4 endpoints per
//! Service, 3 nodes) so that 10^6 cases stay cheap, and drawn from small pools of names and
//! addresses so that the interesting coincidences are frequent rather than rare: the same
//! endpoint in two slices with different conditions, hints that do or do not name this node or
//! its zone, IP-string orders that differ from numeric orders (`10.244.10.1` < `10.244.2.2`),
//! both families, maximum-length names, port 1 and 65535.
//!
//! Values are valid the way the manifest converter produces them (the model's contract:
//! validation happens at conversion): unique Service and slice names, unique ClusterIPs and
//! NodePorts, unique port names and (port, protocol) pairs per Service, endpoint addresses of
//! the slice's family. Conditions are deliberately *not* restricted to the combinations the
//! EndpointSlice controller writes (ready ⇒ serving ∧ ¬terminating): manifests can say anything
//! and the resolver must stay sane for all of it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use crate::cluster::ClusterState;
use crate::types::*;

/// The nodes of every generated cluster (Node objects and endpoints' `nodeName`s).
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Zones of the nodes above, in order; `zone-c` exists only in hints (a zone without nodes).
pub const ZONES: [&str; 3] = ["zone-a", "zone-a", "zone-b"];
const HINT_ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// 63 characters: the longest namespace or Service name Kubernetes accepts (a DNS label). It
/// makes the longest chain comments and `recent` names a renderer can be asked for.
const LONG_LABEL: &str = "a123456789b123456789c123456789d123456789e123456789f123456789xyz";

const NAMESPACES: [&str; 3] = ["default", "ns", LONG_LABEL];
/// Service names get their index appended (uniqueness), so the long one leaves room for it.
const SERVICE_NAMES: [&str; 4] = ["web", "dns", "s", "a123456789b123456789c123456789d123456789e123456789f12345678"];
/// Distinct, ≤ 15 characters (an IANA service name); a Service's ports take consecutive ones.
const PORT_NAMES: [&str; 5] = ["http", "dns", "p", "metrics", "abcdefghijklmno"];
const SERVICE_PORTS: [u16; 6] = [80, 443, 53, 8080, 1, 65535];
const ENDPOINT_PORTS: [u16; 5] = [8080, 80, 5353, 1, 65535];

/// Endpoint addresses, string order ≠ numeric order on purpose; pods of node-a/b/c mostly.
const V4_ENDPOINTS: [&str; 6] = ["10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.10", "10.244.3.2", "10.244.10.1"];
const V6_ENDPOINTS: [&str; 6] =
    ["fd00:244:1::2", "fd00:244:1::3", "fd00:244:2::2", "fd00:244:2::a", "fd00:244:3::2", "fd00:244::10"];
const EXTERNAL_IPS: [&str; 4] = ["198.51.100.1", "198.51.100.2", "2001:db8::1", "2001:db8::2"];
const LB_IPS: [&str; 4] = ["203.0.113.1", "203.0.113.2", "2001:db8:1::1", "2001:db8:1::2"];
/// Source ranges; `10.0.1.0/24` and `fd00:1::/64` hold the node IPs (kube-proxy's allowFromNode).
const SOURCE_RANGES: [&str; 6] =
    ["10.0.0.0/8", "192.168.0.0/16", "0.0.0.0/0", "10.0.1.0/24", "2001:db8::/32", "fd00:1::/64"];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid pool address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid pool CIDR")
}

/// A generated cluster: the objects, in the order they were generated, so that tests can also
/// insert them in another order.
#[derive(Clone, Debug)]
pub struct GeneratedCluster {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// ServiceCIDR objects: name → `spec.cidrs`.
    pub service_cidrs: Vec<(String, Vec<IpNet>)>,
}

impl GeneratedCluster {
    /// The objects upserted in generation order.
    pub fn state(&self) -> ClusterState {
        let mut st = ClusterState::default();
        self.services.iter().cloned().for_each(|s| st.upsert_service(s));
        self.slices.iter().cloned().for_each(|s| st.upsert_slice(s));
        self.nodes.iter().cloned().for_each(|n| st.upsert_node(n));
        for (name, cidrs) in &self.service_cidrs {
            st.service_cidr_objects.insert(name.clone(), cidrs.clone());
        }
        st
    }

    /// The same objects upserted in an order drawn from `seed` (kinds interleaved too), as a
    /// watcher delivers them in whatever order the API server sends.
    pub fn state_shuffled(&self, seed: u64) -> ClusterState {
        enum Obj<'a> {
            Svc(&'a Service),
            Slice(&'a EndpointSlice),
            Node(&'a Node),
            Cidr(&'a (String, Vec<IpNet>)),
        }
        let mut objs: Vec<Obj> = self
            .services
            .iter()
            .map(Obj::Svc)
            .chain(self.slices.iter().map(Obj::Slice))
            .chain(self.nodes.iter().map(Obj::Node))
            .chain(self.service_cidrs.iter().map(Obj::Cidr))
            .collect();
        // Fisher–Yates with splitmix64: a permutation from the seed without a rand dependency.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for i in (1..objs.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            objs.swap(i, j);
        }
        let mut st = ClusterState::default();
        for o in objs {
            match o {
                Obj::Svc(s) => st.upsert_service(s.clone()),
                Obj::Slice(s) => st.upsert_slice(s.clone()),
                Obj::Node(n) => st.upsert_node(n.clone()),
                Obj::Cidr((name, cidrs)) => {
                    st.service_cidr_objects.insert(name.clone(), cidrs.clone());
                }
            }
        }
        st
    }
}

/// One endpoint before its address is chosen (the slice's family decides the pool).
#[derive(Clone, Debug)]
struct RawEndpoint {
    addr: usize,
    node_name: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone: Option<String>,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct RawSlice {
    /// `Some(x)`: the Service's family `(slice index + x) % families` (so that the first two
    /// slices of a dual-stack Service usually cover both families, as the EndpointSlice
    /// controller's do); `None`: the random address type below.
    own_family: Option<usize>,
    address_type: AddressType,
    /// Serves every port of the Service (as the EndpointSlice controller writes it), with the
    /// first `ports.len()` numbers below; else only the ports listed.
    all_ports: bool,
    /// (index of the Service port it serves, protocol differs, name differs, port number)
    ports: Vec<(usize, bool, bool, u16)>,
    endpoints: Vec<RawEndpoint>,
    /// Labelled for a Service that does not exist.
    orphan: bool,
}

#[derive(Clone, Debug)]
struct RawService {
    namespace: usize,
    name: usize,
    service_type: ServiceType,
    /// ClusterIP families, primary first.
    families: Vec<IpFamily>,
    first_port_name: usize,
    /// (protocol, port, numeric target port (else named), node port wanted)
    ports: Vec<(Protocol, u16, bool, bool)>,
    external_ips: Vec<&'static str>,
    load_balancer_ips: Vec<&'static str>,
    source_ranges: Vec<&'static str>,
    external_local: bool,
    internal_local: bool,
    health_check: bool,
    affinity: Option<u32>,
    traffic_distribution: Option<&'static str>,
    slices: Vec<RawSlice>,
}

/// 1..=max elements, empty once in `weight + 1` (an empty list is a corner case, not the common
/// one). A union of two list strategies, not a flat map: a flat map builds its inner strategy
/// for every value, which made generation several times slower.
fn rarely_empty<S: Strategy + Clone>(
    element: S,
    weight: u32,
    max: usize,
) -> impl Strategy<Value = Vec<S::Value>> + Clone {
    prop_oneof![1 => prop::collection::vec(element.clone(), 0..=0), weight => prop::collection::vec(element, 1..=max)]
}

fn protocol() -> impl Strategy<Value = Protocol> + Clone {
    prop_oneof![3 => Just(Protocol::Tcp), 2 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
}

fn hint_set(pool: &'static [&'static str]) -> impl Strategy<Value = BTreeSet<String>> + Clone {
    // Mostly non-empty, so that "every ready endpoint has hints" (the condition for topology)
    // holds in a good share of Services, not only in one-endpoint ones.
    prop_oneof![
        1 => Just(BTreeSet::new()),
        3 => subsequence(pool, 1..=2).prop_map(|v| v.into_iter().map(String::from).collect()),
    ]
}

fn raw_endpoint() -> impl Strategy<Value = RawEndpoint> + Clone {
    let node = prop_oneof![
        6 => select(&NODES[..]).prop_map(|n| Some(n.to_string())),
        1 => Just(None),
        // A node that is in no Node object, and the empty name (not local to a nameless node:
        // kube-proxy's isLocal needs a non-empty hostname).
        1 => select(&["node-z", ""][..]).prop_map(|n| Some(n.to_string())),
    ];
    // Mostly the combinations the EndpointSlice controller writes, but any other too.
    let conditions = prop_oneof![
        6 => Just((true, true, false)),
        2 => Just((false, true, true)),
        2 => Just((false, false, true)),
        1 => Just((false, false, false)),
        1 => any::<(bool, bool, bool)>(),
    ];
    (
        0..V4_ENDPOINTS.len(),
        node,
        conditions,
        proptest::option::of(select(&HINT_ZONES[..])),
        hint_set(&HINT_ZONES),
        hint_set(&NODES),
    )
        .prop_map(|(addr, node_name, (ready, serving, terminating), zone, zone_hints, node_hints)| RawEndpoint {
            addr,
            node_name,
            ready,
            serving,
            terminating,
            zone: zone.map(String::from),
            zone_hints,
            node_hints,
        })
}

fn raw_slice() -> impl Strategy<Value = RawSlice> + Clone {
    let address_type =
        prop_oneof![5 => Just(AddressType::IPv4), 4 => Just(AddressType::IPv6), 1 => Just(AddressType::Fqdn)];
    let port = (0..3usize, prop::bool::weighted(0.05), prop::bool::weighted(0.05), select(&ENDPOINT_PORTS[..]));
    (
        proptest::option::weighted(0.85, prop_oneof![4 => Just(0usize), 1 => Just(1usize)]),
        address_type,
        prop::bool::weighted(0.75),
        prop::collection::vec(port, 0..=3),
        // Rarely none: a slice without endpoints is a corner, not the common case.
        rarely_empty(raw_endpoint(), 6, 4),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(own_family, address_type, all_ports, ports, endpoints, orphan)| RawSlice {
            own_family,
            address_type,
            all_ports,
            ports,
            endpoints,
            orphan,
        })
}

fn raw_service() -> impl Strategy<Value = RawService> {
    let service_type = prop_oneof![
        2 => Just(ServiceType::ClusterIP),
        1 => Just(ServiceType::NodePort),
        2 => Just(ServiceType::LoadBalancer),
    ];
    let families = prop_oneof![
        4 => Just(vec![IpFamily::V4]),
        2 => Just(vec![IpFamily::V6]),
        2 => Just(vec![IpFamily::V4, IpFamily::V6]),
        1 => Just(vec![IpFamily::V6, IpFamily::V4]),
    ];
    let port = (protocol(), select(&SERVICE_PORTS[..]), any::<bool>(), prop::bool::weighted(0.85));
    let identity = (0..NAMESPACES.len(), 0..SERVICE_NAMES.len(), service_type, families);
    let ports = (0..PORT_NAMES.len(), rarely_empty(port, 8, 3));
    let addresses = (
        subsequence(&EXTERNAL_IPS[..], 0..=2).prop_shuffle(),
        subsequence(&LB_IPS[..], 0..=2).prop_shuffle(),
        subsequence(&SOURCE_RANGES[..], 0..=2),
    );
    let policies = (
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.8),
        proptest::option::weighted(0.3, prop_oneof![Just(DEFAULT_AFFINITY_TIMEOUT_SECONDS), 1..=86400u32]),
        proptest::option::weighted(0.2, select(&["PreferClose", "PreferSameZone", "PreferSameNode"][..])),
    );
    let slices = rarely_empty(raw_slice(), 8, 2);
    (identity, ports, addresses, policies, slices).prop_map(
        |(
            (namespace, name, service_type, families),
            (first_port_name, ports),
            (external_ips, load_balancer_ips, source_ranges),
            (external_local, internal_local, health_check, affinity, traffic_distribution),
            slices,
        )| RawService {
            namespace,
            name,
            service_type,
            families,
            first_port_name,
            ports,
            external_ips,
            load_balancer_ips,
            source_ranges,
            external_local,
            internal_local,
            health_check,
            affinity,
            traffic_distribution,
            slices,
        },
    )
}

fn build(raw: Vec<RawService>, with_service_cidrs: bool) -> GeneratedCluster {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let namespace = NAMESPACES[r.namespace].to_string();
        let name = ServiceName::new(namespace.clone(), format!("{}{i}", SERVICE_NAMES[r.name]));
        let cluster_ips = r
            .families
            .iter()
            .map(|f| match f {
                IpFamily::V4 => ip(&format!("10.96.0.{}", i + 1)),
                IpFamily::V6 => ip(&format!("fd00:96::{:x}", i + 1)),
            })
            .collect();
        let mut ports: Vec<ServicePort> = Vec::new();
        let single = r.ports.len() == 1;
        for (j, (protocol, port, numeric_target, wants_node_port)) in r.ports.into_iter().enumerate() {
            // Kubernetes: one (port, protocol) pair once per Service.
            if ports.iter().any(|p| p.port == port && p.protocol == protocol) {
                continue;
            }
            let port_name = if single && r.first_port_name == 0 {
                String::new() // an unnamed port: only legal as the only port
            } else {
                PORT_NAMES[(r.first_port_name + j) % PORT_NAMES.len()].to_string()
            };
            let node_port =
                (r.service_type != ServiceType::ClusterIP && wants_node_port).then(|| 30000 + 10 * i as u16 + j as u16);
            // A named targetPort is never empty (the converter rejects that).
            let target_port = if numeric_target || port_name.is_empty() {
                TargetPort::Number(ENDPOINT_PORTS[j])
            } else {
                TargetPort::Name(port_name.clone())
            };
            ports.push(ServicePort { name: port_name.into(), protocol, port, node_port, target_port });
        }
        let is_lb = r.service_type == ServiceType::LoadBalancer;
        let external_local = r.external_local;
        let svc = Service {
            name: name.clone(),
            service_type: r.service_type,
            cluster_ips,
            ports: ports.clone(),
            external_ips: r.external_ips.iter().map(|s| ip(s)).collect(),
            load_balancer_ips: if is_lb { r.load_balancer_ips.iter().map(|s| ip(s)).collect() } else { Vec::new() },
            load_balancer_source_ranges: if is_lb {
                r.source_ranges.iter().map(|s| net(s)).collect()
            } else {
                Vec::new()
            },
            external_traffic_policy: if external_local { TrafficPolicy::Local } else { TrafficPolicy::Cluster },
            internal_traffic_policy: if r.internal_local { TrafficPolicy::Local } else { TrafficPolicy::Cluster },
            health_check_node_port: (is_lb && external_local && r.health_check).then(|| 32000 + i as u16),
            session_affinity_timeout: r.affinity,
            traffic_distribution: r.traffic_distribution.map(String::from),
        };
        for (k, rs) in r.slices.into_iter().enumerate() {
            let mut eports: Vec<EndpointPort> = Vec::new();
            let address_type = match rs.own_family {
                Some(x) => match r.families[(k + x) % r.families.len()] {
                    IpFamily::V4 => AddressType::IPv4,
                    IpFamily::V6 => AddressType::IPv6,
                },
                None => rs.address_type,
            };
            let mut raw_ports = rs.ports;
            if rs.all_ports {
                // Port j of the Service, numbered from the j-th raw entry (or the pool).
                raw_ports = (0..ports.len())
                    .map(|j| match raw_ports.get(j) {
                        Some(&(_, p, n, number)) => (j, p, n, number),
                        None => (j, false, false, ENDPOINT_PORTS[j]),
                    })
                    .collect();
            }
            if !ports.is_empty() {
                for (idx, other_protocol, other_name, number) in raw_ports {
                    let sp = &ports[idx % ports.len()];
                    let protocol = if other_protocol {
                        match sp.protocol {
                            Protocol::Tcp => Protocol::Udp,
                            _ => Protocol::Tcp,
                        }
                    } else {
                        sp.protocol
                    };
                    let name: crate::Name = if other_name { "other".into() } else { sp.name.clone() };
                    // The API: a port name once per slice.
                    if !eports.iter().any(|p| p.name == name && p.protocol == protocol) {
                        eports.push(EndpointPort { name, protocol, port: number });
                    }
                }
            }
            let pool = match address_type {
                AddressType::IPv6 => &V6_ENDPOINTS,
                _ => &V4_ENDPOINTS,
            };
            let endpoints = rs
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    address: ip(pool[e.addr]),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    node_name: e.node_name.map(Into::into),
                    zone: e.zone.map(Into::into),
                    zone_hints: e.zone_hints.into(),
                    node_hints: e.node_hints.into(),
                })
                // An FQDN slice's endpoints are not addresses; the converter keeps none.
                .filter(|_| address_type != AddressType::Fqdn)
                .collect();
            let service =
                if rs.orphan { ServiceName::new(namespace.clone(), format!("ghost{i}")) } else { name.clone() };
            slices.push(EndpointSlice {
                namespace: namespace.clone().into(),
                name: format!("{}-{k}", name.name).into(),
                service,
                address_type,
                endpoints,
                ports: eports,
                trigger_time: None,
            });
        }
        services.push(svc);
    }
    let nodes = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| Node {
            name: n.to_string(),
            addresses: vec![ip(&format!("10.0.1.{}", i + 1)), ip(&format!("fd00:1::{}", i + 1))],
            zone: Some(ZONES[i].to_string()),
            pod_cidrs: vec![net(&format!("10.244.{}.0/24", i + 1)), net(&format!("fd00:244:{}::/64", i + 1))],
        })
        .collect();
    let service_cidrs = if with_service_cidrs {
        vec![("kubernetes".to_string(), vec![net("10.96.0.0/16"), net("fd00:96::/112")])]
    } else {
        Vec::new()
    };
    GeneratedCluster { services, slices, nodes, service_cidrs }
}

/// A random small cluster (≤ 6 Services).
pub fn cluster() -> impl Strategy<Value = GeneratedCluster> {
    (prop::collection::vec(raw_service(), 0..=6), any::<bool>()).prop_map(|(raw, cidrs)| build(raw, cidrs))
}

/// A random node to resolve for: one of the cluster's nodes or an unknown one (no local
/// endpoints), with random node IPs, zone, local-traffic detection, NodePort addresses and
/// interface addresses.
pub fn node_context() -> impl Strategy<Value = NodeContext> {
    let node_name = prop_oneof![6 => select(&NODES[..]), 1 => Just("node-x"), 1 => Just("")];
    let node_ips = select(vec![
        vec![],
        vec!["10.0.1.1"],
        vec!["fd00:1::1"],
        vec!["10.0.1.1", "fd00:1::1"],
        vec!["fd00:1::1", "10.0.1.1", "10.0.1.9"],
    ]);
    let zone = prop_oneof![2 => Just(Some("zone-a")), 1 => Just(Some("zone-b")), 1 => Just(None)];
    let cluster_cidrs = subsequence(&["10.244.0.0/16", "fd00:244::/48", "10.245.0.0/16"][..], 0..=3);
    let pod_cidrs = subsequence(&["10.244.1.0/24", "fd00:244:1::/64"][..], 0..=2);
    let detect_local = prop_oneof![
        3 => Just(DetectLocalMode::ClusterCidr),
        1 => Just(DetectLocalMode::NodeCidr),
        1 => select(&["cbr0", ""][..]).prop_map(|s| DetectLocalMode::BridgeInterface(s.into())),
        1 => select(&["veth", ""][..]).prop_map(|s| DetectLocalMode::InterfaceNamePrefix(s.into())),
    ];
    let nodeport_cidrs =
        subsequence(&["10.0.1.0/24", "127.0.0.0/8", "0.0.0.0/0", "fd00:1::/64", "::/0", "192.168.0.0/16"][..], 0..=3);
    let nodeport_addresses = prop_oneof![
        Just(NodePortAddresses::Primary),
        Just(NodePortAddresses::All),
        nodeport_cidrs.prop_map(|c| NodePortAddresses::Cidrs(c.iter().map(|s| net(s)).collect())),
    ];
    let local_addresses = proptest::option::of(subsequence(
        &["127.0.0.1", "10.0.1.1", "10.0.2.1", "::1", "fd00:1::1", "fd00:2::1"][..],
        0..=6,
    ));
    let service_cidrs = select(vec![vec![], vec!["10.96.0.0/16", "fd00:96::/112"]]);
    (
        (node_name, node_ips, zone, cluster_cidrs, pod_cidrs),
        (detect_local, any::<bool>(), 0..=31u8, nodeport_addresses, local_addresses, service_cidrs),
    )
        .prop_map(
            |(
                (node_name, node_ips, zone, cluster_cidrs, pod_cidrs),
                (detect_local, masquerade_all, masquerade_bit, nodeport_addresses, local_addresses, service_cidrs),
            )| NodeContext {
                node_name: node_name.to_string(),
                node_ips: node_ips.iter().map(|s| ip(s)).collect(),
                zone: zone.map(String::from),
                cluster_cidrs: cluster_cidrs.iter().map(|s| net(s)).collect(),
                pod_cidrs: pod_cidrs.iter().map(|s| net(s)).collect(),
                detect_local,
                masquerade_all,
                masquerade_bit,
                nodeport_addresses,
                local_addresses: local_addresses.map(|a| a.iter().map(|s| ip(s)).collect()),
                service_cidrs: service_cidrs.iter().map(|s| net(s)).collect(),
            },
        )
}
