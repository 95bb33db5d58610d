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

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
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
    pub port: String,
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
    pub name: String,
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
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    /// Empty for an unnamed port (matches an unnamed Service port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
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
}

/// `--nodeport-addresses`: which local addresses accept NodePort traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub enum NodePortAddresses {
    /// kube-proxy nftables' default (`primary`): the node's own IPs.
    #[default]
    Primary,
    /// Every local address of the node (kube-proxy iptables' default). Loopback is excluded,
    /// as in nftables mode: no localhost NodePorts.
    All,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// Everything about the node the proxy runs on that changes what it programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Default)]
pub struct NodeContext {
    /// `--hostname-override`, else the host name.
    pub node_name: String,
    /// `--node-ip` (repeatable), else the Node object's addresses.
    pub node_ips: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label of this node, from its Node object.
    pub zone: Option<String>,
    /// `--cluster-cidr` (repeatable): traffic from outside these ranges is masqueraded when it
    /// goes to a ClusterIP. Empty → no local-traffic detection (kube-proxy's no-op detector).
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    pub nodeport_addresses: NodePortAddresses,
}

impl NodeContext {
    /// Fills what flags left open from this node's Node object: node IPs and zone.
    pub fn complete_from(&mut self, node: &Node) {
        if self.node_ips.is_empty() {
            self.node_ips = node.addresses.clone();
        }
        if self.zone.is_none() {
            self.zone = node.zone.clone();
        }
    }

    pub fn node_ips(&self, family: IpFamily) -> impl Iterator<Item = &IpAddr> {
        self.node_ips.iter().filter(move |ip| family.matches(ip))
    }

    pub fn cluster_cidrs(&self, family: IpFamily) -> impl Iterator<Item = &IpNet> {
        self.cluster_cidrs.iter().filter(move |n| IpFamily::of_net(n) == family)
    }
}

/// Go's `net.JoinHostPort`: `ip:port`, `[ip6]:port`, which is how kube-proxy prints an endpoint.
pub fn join_host_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
