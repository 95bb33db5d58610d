//! Plain data types of the service model. Validation happens where objects are converted from
//! Kubernetes' types (the `nftproxy-manifest` crate); values here are already valid.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// An IP family; kube-proxy runs one proxier per family and so do our backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }
    pub fn matches(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A layer-4 protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses Kubernetes' spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
    /// Lower-case name, as kube-proxy writes it into chain names and iptables/nft rules.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// The IANA protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A Kubernetes name (namespace, object, node, zone, port name): stored inline up to 24 bytes,
/// which every generated name and most hand-written ones are, so the model's many copies of
/// names cost no heap allocation (`compact_str`).
pub type Name = compact_str::CompactString;

/// A name that many objects hold the same value of — an endpoint's node and zone: each distinct
/// value is stored once and shared, so an endpoint holds a pointer (8 bytes, no allocation),
/// where a [`Name`] took 24 bytes inline and a heap block past 24 bytes, as node names often are
/// (`ip-10-0-1-23.eu-west-1.compute.internal`). At 50k Services × 10 endpoints the two took
/// 24 MB. The pool of values is process-wide, and values no longer held are dropped from it as
/// it grows.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedName(std::sync::Arc<String>);

/// The distinct [`SharedName`]s, and the pool size at which to drop those no longer held.
static SHARED_NAMES: std::sync::Mutex<(Vec<std::sync::Arc<String>>, usize)> = std::sync::Mutex::new((Vec::new(), 64));

impl SharedName {
    pub fn new(name: &str) -> SharedName {
        let mut pool = SHARED_NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (names, prune_at) = &mut *pool;
        // Sorted, searched: a cluster has tens to thousands of nodes and a handful of zones.
        match names.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(i) => SharedName(names[i].clone()),
            Err(i) => {
                let shared = std::sync::Arc::new(name.to_string());
                names.insert(i, shared.clone());
                if names.len() >= *prune_at {
                    names.retain(|n| std::sync::Arc::strong_count(n) > 1);
                    *prune_at = (names.len() * 2).max(64);
                }
                SharedName(shared)
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedName {
    fn from(name: &str) -> SharedName {
        SharedName::new(name)
    }
}

impl From<String> for SharedName {
    fn from(name: String) -> SharedName {
        SharedName::new(&name)
    }
}

impl PartialEq<str> for SharedName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for SharedName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: Name,
    pub name: Name,
}

impl ServiceName {
    pub fn new(namespace: impl Into<Name>, name: impl Into<Name>) -> Self {
        ServiceName { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// kube-proxy's `ServicePortName`: a Service, one of its port names, and the protocol.
/// Displays as kube-proxy's `String()`: `ns/name:port`, or `ns/name` for an unnamed port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    pub service: ServiceName,
    pub port: Name,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() { write!(f, "{}", self.service) } else { write!(f, "{}:{}", self.service, self.port) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// externalTrafficPolicy / internalTrafficPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// A Service port's targetPort. Only informational for the proxy: the EndpointSlice controller
/// resolves named ports, and the proxy routes to the slices' port numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Name,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub target_port: TargetPort,
}

/// A Service as the proxy sees it. ExternalName and headless Services never become one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (one per family; the first is the primary).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, except those with `ipMode: Proxy` (kube-proxy does not
    /// program those: the load balancer delivers to the node itself).
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` → its timeout in seconds.
    pub session_affinity_timeout: Option<u32>,
    pub traffic_distribution: Option<String>,
}

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

impl Service {
    /// kube-proxy's `ExternallyAccessible`: reachable through something other than the ClusterIP.
    pub fn externally_accessible(&self, port: &ServicePort) -> bool {
        port.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
}

impl AddressType {
    pub fn family(self) -> Option<IpFamily> {
        match self {
            AddressType::IPv4 => Some(IpFamily::V4),
            AddressType::IPv6 => Some(IpFamily::V6),
            AddressType::Fqdn => None,
        }
    }
}

/// One endpoint of a slice. Conditions already carry Kubernetes' meaning of unset values
/// (ready: unset = ready; serving: unset = ready; terminating: unset = false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The first of `addresses` (the only one consumers use, per the EndpointSlice API).
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<SharedName>,
    pub zone: Option<SharedName>,
    pub zone_hints: HintSet,
    pub node_hints: HintSet,
}

/// An endpoint's topology hints (`hints.forZones` or `hints.forNodes`): a set of names that is
/// empty for nearly every endpoint, so it takes one pointer (8 bytes, no allocation) until it
/// holds something — an empty `BTreeSet` took 24 bytes per endpoint, twice, at 500k endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
// The box is the point: one pointer (8 bytes) per endpoint instead of an empty set's 24.
#[allow(clippy::box_collection)]
pub struct HintSet(Option<Box<BTreeSet<String>>>);

impl HintSet {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_empty())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(name))
    }
    pub fn insert(&mut self, name: String) -> bool {
        self.0.get_or_insert_default().insert(name)
    }
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|s| s.iter())
    }
}

impl FromIterator<String> for HintSet {
    fn from_iter<I: IntoIterator<Item = String>>(it: I) -> HintSet {
        let s: BTreeSet<String> = it.into_iter().collect();
        HintSet((!s.is_empty()).then(|| Box::new(s)))
    }
}

impl From<BTreeSet<String>> for HintSet {
    fn from(s: BTreeSet<String>) -> HintSet {
        s.into_iter().collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    /// Empty for an unnamed port (matches an unnamed Service port).
    pub name: Name,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: Name,
    pub name: Name,
    /// From the `kubernetes.io/service-name` label.
    pub service: ServiceName,
    pub address_type: AddressType,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation, verbatim.
    pub trigger_time: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// InternalIP addresses first, then ExternalIP (kube-proxy's node-IP detection order).
    pub addresses: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `spec.podCIDRs` (for `--detect-local-mode NodeCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

/// `--nodeport-addresses`: which local addresses accept NodePort traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub enum NodePortAddresses {
    /// kube-proxy nftables' default (`primary`): the node's primary IP of each family.
    #[default]
    Primary,
    /// Every local address of the node (kube-proxy iptables' default, `0.0.0.0/0` and `::/0`).
    All,
    /// Local (interface) addresses inside these CIDRs (kube-proxy's `GetNodeIPs`). A CIDR of
    /// `0.0.0.0/0` or `::/0` means every local address of that family.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// kube-proxy's `ContainsIPv4Loopback`: every address (no IPv4 CIDR, or `0.0.0.0/0`), or an
    /// IPv4 CIDR that overlaps 127.0.0.0/8. `primary` never does (node IPs are not loopback).
    pub fn contains_ipv4_loopback(&self) -> bool {
        let loopback: IpNet = "127.0.0.0/8".parse().expect("valid");
        match self {
            NodePortAddresses::All => true,
            NodePortAddresses::Primary => false,
            NodePortAddresses::Cidrs(c) => {
                let v4: Vec<&IpNet> = c.iter().filter(|n| matches!(n, IpNet::V4(_))).collect();
                v4.is_empty() || v4.iter().any(|n| n.contains(&loopback) || loopback.contains(*n))
            }
        }
    }
}

/// Which local addresses of one family take NodePorts (kube-proxy's `MatchAll` / `GetNodeIPs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum NodePortIps {
    /// Every local address (`fib daddr type local` / `-m addrtype --dst-type LOCAL`).
    AnyLocal,
    /// Exactly these (loopback included when configured; each backend decides what it does
    /// with loopback, as kube-proxy's modes do).
    Ips(Vec<IpAddr>),
}

/// kube-proxy's `--detect-local-mode`: how traffic from this node's pods is recognised (it is
/// not masqueraded to ClusterIPs, and takes the ETP=Local short-circuit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub enum DetectLocalMode {
    /// The first `--cluster-cidr` of each family (kube-proxy's default).
    #[default]
    ClusterCidr,
    /// The first of this node's `spec.podCIDRs` of each family.
    NodeCidr,
    /// Packets that arrive on this bridge (`--pod-bridge-interface`).
    BridgeInterface(String),
    /// Packets that arrive on an interface whose name starts with this (`--pod-interface-name-prefix`).
    InterfaceNamePrefix(String),
}

/// The local-traffic detector of one family, as the backends match it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LocalTraffic {
    /// No detection possible (no CIDR of this family): kube-proxy's no-op detector — nothing is
    /// masqueraded for being off-cluster and there is no pod short-circuit.
    Unknown,
    /// Source address inside this CIDR.
    Cidr(IpNet),
    /// Input interface named exactly this.
    Interface(String),
    /// Input interface name starting with this.
    InterfacePrefix(String),
}

/// kube-proxy's masquerade mark (`masqueradeBit` 14).
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// Everything about the node the proxy runs on that changes what it programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeContext {
    /// `--hostname-override`, else the host name.
    pub node_name: String,
    /// `--node-ip` (repeatable), else the Node object's addresses. The first of each family is
    /// the primary node IP.
    pub node_ips: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label of this node, from its Node object.
    pub zone: Option<String>,
    /// `--cluster-cidr` (repeatable): with [`DetectLocalMode::ClusterCidr`], traffic from outside
    /// the first CIDR of a family is masqueraded when it goes to a ClusterIP.
    pub cluster_cidrs: Vec<IpNet>,
    /// This node's `spec.podCIDRs`, from its Node object ([`DetectLocalMode::NodeCidr`]).
    pub pod_cidrs: Vec<IpNet>,
    pub detect_local: DetectLocalMode,
    pub masquerade_all: bool,
    /// The masquerade mark bit (`--iptables-masquerade-bit`, `nftables.masqueradeBit`).
    pub masquerade_bit: u8,
    pub nodeport_addresses: NodePortAddresses,
    /// The node's interface addresses, read from the kernel by the caller (rtnetlink). None
    /// when unknown (rendering away from the node): the node IPs stand in for them.
    pub local_addresses: Option<Vec<IpAddr>>,
    /// The `spec.cidrs` of every ServiceCIDR object: traffic to an address inside them that no
    /// Service uses is dropped (kube-proxy nftables' `cluster-ips-check`).
    pub service_cidrs: Vec<IpNet>,
}

impl Default for NodeContext {
    fn default() -> Self {
        NodeContext {
            node_name: String::new(),
            node_ips: Vec::new(),
            zone: None,
            cluster_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            detect_local: DetectLocalMode::default(),
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            nodeport_addresses: NodePortAddresses::default(),
            local_addresses: None,
            service_cidrs: Vec::new(),
        }
    }
}

impl NodeContext {
    /// Fills what flags left open from this node's Node object: node IPs, zone and pod CIDRs.
    pub fn complete_from(&mut self, node: &Node) {
        if self.node_ips.is_empty() {
            self.node_ips = node.addresses.clone();
        }
        if self.zone.is_none() {
            self.zone = node.zone.clone();
        }
        if self.pod_cidrs.is_empty() {
            self.pod_cidrs = node.pod_cidrs.clone();
        }
    }

    /// Fills what the cluster state says about this node: its Node object and the ServiceCIDRs.
    pub fn complete_from_state(&mut self, state: &crate::ClusterState) {
        if let Some(node) = state.nodes.get(&self.node_name) {
            self.complete_from(node);
        }
        self.service_cidrs = state.service_cidrs();
    }

    pub fn node_ips(&self, family: IpFamily) -> impl Iterator<Item = &IpAddr> {
        self.node_ips.iter().filter(move |ip| family.matches(ip))
    }

    /// The primary node IP of a family (kube-proxy's `nodeIPs[family]`).
    pub fn primary_node_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.node_ips(family).next().copied()
    }

    /// kube-proxy's `allowFromNode`: when a `loadBalancerSourceRanges` range holds the primary
    /// node IP of the family, the load-balancer IPs themselves are allowed sources too (a VIP
    /// bound on the node answers the node with the VIP as source).
    pub fn source_ranges_allow_node(&self, ranges: &[IpNet], family: IpFamily) -> bool {
        self.primary_node_ip(family).is_some_and(|ip| ranges.iter().any(|r| r.contains(&ip)))
    }

    pub fn cluster_cidrs(&self, family: IpFamily) -> impl Iterator<Item = &IpNet> {
        self.cluster_cidrs.iter().filter(move |n| IpFamily::of_net(n) == family)
    }

    pub fn service_cidrs(&self, family: IpFamily) -> impl Iterator<Item = &IpNet> {
        self.service_cidrs.iter().filter(move |n| IpFamily::of_net(n) == family)
    }

    /// The mark that flags a packet for masquerading.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }

    /// kube-proxy's local-traffic detector for a family (`getLocalDetectors`): the first CIDR
    /// of that family (cluster or node pod CIDRs), or the interface match.
    pub fn local_traffic(&self, family: IpFamily) -> LocalTraffic {
        let first =
            |nets: &[IpNet]| nets.iter().find(|n| IpFamily::of_net(n) == family).map(|n| LocalTraffic::Cidr(*n));
        match &self.detect_local {
            DetectLocalMode::ClusterCidr => first(&self.cluster_cidrs),
            DetectLocalMode::NodeCidr => first(&self.pod_cidrs),
            DetectLocalMode::BridgeInterface(i) if !i.is_empty() => Some(LocalTraffic::Interface(i.clone())),
            DetectLocalMode::InterfaceNamePrefix(p) if !p.is_empty() => Some(LocalTraffic::InterfacePrefix(p.clone())),
            _ => None,
        }
        .unwrap_or(LocalTraffic::Unknown)
    }

    /// Whether a packet with this source (and input interface, when known) counts as local
    /// traffic, i.e. from a pod. `None`: the detector cannot tell (no detector, or an interface
    /// match without an interface).
    pub fn is_local_traffic(&self, src: &IpAddr, iifname: Option<&str>) -> Option<bool> {
        match self.local_traffic(IpFamily::of(src)) {
            LocalTraffic::Unknown => None,
            LocalTraffic::Cidr(n) => Some(n.contains(src)),
            LocalTraffic::Interface(i) => iifname.map(|n| n == i),
            LocalTraffic::InterfacePrefix(p) => iifname.map(|n| n.starts_with(&p)),
        }
    }

    /// The addresses that take NodePorts in a family (kube-proxy's `NodePortAddresses`).
    pub fn nodeport_ips(&self, family: IpFamily) -> NodePortIps {
        let locals: Vec<IpAddr> = match &self.local_addresses {
            Some(a) => a.iter().copied().filter(|ip| family.matches(ip)).collect(),
            None => self.node_ips(family).copied().collect(),
        };
        match &self.nodeport_addresses {
            NodePortAddresses::All => NodePortIps::AnyLocal,
            NodePortAddresses::Primary => {
                // kube-proxy turns `primary` into the primary node IP's /32 (/128) and then keeps
                // the interface addresses inside it.
                let primary = self.primary_node_ip(family);
                NodePortIps::Ips(
                    primary.filter(|p| self.local_addresses.is_none() || locals.contains(p)).into_iter().collect(),
                )
            }
            NodePortAddresses::Cidrs(cidrs) => {
                let of_family: Vec<&IpNet> = cidrs.iter().filter(|n| IpFamily::of_net(n) == family).collect();
                if of_family.is_empty() || of_family.iter().any(|n| n.prefix_len() == 0) {
                    // kube-proxy: no CIDR of this family means the zero CIDR, i.e. every address.
                    return NodePortIps::AnyLocal;
                }
                let mut ips: Vec<IpAddr> =
                    locals.into_iter().filter(|ip| of_family.iter().any(|n| n.contains(ip))).collect();
                ips.dedup();
                NodePortIps::Ips(ips)
            }
        }
    }

    /// Whether `ip` takes NodePorts (loopback decided by the caller).
    pub fn takes_nodeports(&self, ip: &IpAddr) -> bool {
        match self.nodeport_ips(IpFamily::of(ip)) {
            NodePortIps::AnyLocal => match &self.local_addresses {
                Some(a) => a.contains(ip) || ip.is_loopback(),
                None => self.node_ips.contains(ip) || ip.is_loopback(),
            },
            NodePortIps::Ips(ips) => ips.contains(ip),
        }
    }
}

/// Go's `net.JoinHostPort`: `ip:port`, `[ip6]:port`, which is how kube-proxy prints an endpoint.
pub fn join_host_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// [`join_host_port`]'s text, kept inline for ordering: comparing two keys compares their
/// strings, without allocating one (sorting every Service's endpoints by a formatted `String`
/// was ~0.2 s of a cold sync at 50k Services × 10).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPortKey {
    /// The text, zero-padded: a zero byte sorts before every character of an address, so a
    /// prefix sorts first, as with strings.
    text: [u8; HostPortKey::MAX],
}

impl HostPortKey {
    /// `[` + the longest IPv6 text (45) + `]:` + 5 digits.
    const MAX: usize = 53;

    pub fn new(ip: &IpAddr, port: u16) -> HostPortKey {
        use std::fmt::Write;
        struct Buf<'a>(&'a mut [u8], usize);
        impl Write for Buf<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let end = self.1 + s.len();
                self.0.get_mut(self.1..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut text = [0u8; HostPortKey::MAX];
        let mut b = Buf(&mut text, 0);
        let fits = match ip {
            IpAddr::V4(a) => write!(b, "{a}:{port}"),
            IpAddr::V6(a) => write!(b, "[{a}]:{port}"),
        };
        debug_assert!(fits.is_ok(), "{ip} port {port} fits {} bytes", HostPortKey::MAX);
        HostPortKey { text }
    }

    /// The text, as [`join_host_port`] gives it.
    pub fn as_str(&self) -> &str {
        let len = self.text.iter().position(|b| *b == 0).unwrap_or(HostPortKey::MAX);
        std::str::from_utf8(&self.text[..len]).expect("written from a str")
    }
}

#[cfg(test)]
mod host_port_key_tests {
    use super::*;

    /// The key is the string and orders like it, IPv4 and the longest IPv6 forms included.
    #[test]
    fn orders_like_the_joined_string() {
        let addrs = [
            "10.0.0.1",
            "10.0.0.10",
            "10.0.0.2",
            "9.255.255.255",
            "255.255.255.255",
            "fd00::1",
            "fd00::10",
            "fd00::a",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "::",
        ];
        let mut pairs = Vec::new();
        for a in addrs {
            for port in [0, 1, 8, 80, 443, 8080, 65535] {
                pairs.push((a.parse::<IpAddr>().unwrap(), port));
            }
        }
        for (ip, port) in &pairs {
            assert_eq!(HostPortKey::new(ip, *port).as_str(), join_host_port(ip, *port));
        }
        for (a, b) in pairs.iter().flat_map(|a| pairs.iter().map(move |b| (a, b))) {
            let by_string = join_host_port(&a.0, a.1).cmp(&join_host_port(&b.0, b.1));
            assert_eq!(HostPortKey::new(&a.0, a.1).cmp(&HostPortKey::new(&b.0, b.1)), by_string, "{a:?} {b:?}");
        }
    }
}

#[cfg(test)]
mod shared_name_tests {
    use super::*;

    /// Equal names share one value; names nobody holds any more leave the pool as it grows.
    #[test]
    fn equal_names_share_one_value_and_unheld_ones_are_dropped() {
        let a = SharedName::new("node-shared-a");
        let b: SharedName = "node-shared-a".into();
        assert!(std::sync::Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "node-shared-a");
        assert_eq!(format!("{a:?} {a}"), "\"node-shared-a\" node-shared-a");
        assert_eq!(std::mem::size_of::<Option<SharedName>>(), 8);
        // 88 bytes with names inline; the cluster state holds one per endpoint.
        assert_eq!(std::mem::size_of::<Endpoint>(), 56);
        for i in 0..1000 {
            drop(SharedName::new(&format!("node-gone-{i}")));
        }
        let pool = SHARED_NAMES.lock().unwrap();
        assert!(pool.0.iter().all(|n| n.as_str() != "node-gone-0"), "an unheld name stayed");
        assert!(pool.0.iter().any(|n| n.as_str() == "node-shared-a"));
        assert!(pool.0.len() < 200, "{} names pooled", pool.0.len());
        assert!(pool.0.windows(2).all(|w| w[0] < w[1]));
    }
}
