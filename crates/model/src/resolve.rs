//! kube-proxy's endpoint rules (pkg/proxy/topology.go `CategorizeEndpoints` and the proxiers'
//! use of it) for one node and one IP family.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::cluster::{ClusterState, MergedEndpoint};
use crate::types::*;

/// One endpoint a service port may route to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResolvedEndpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub node_name: Option<SharedName>,
    /// On this node (`nodeName` equals ours).
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl fmt::Display for ResolvedEndpoint {
    /// `ip:port`, `[ip6]:port`: Go's `net.JoinHostPort`, as kube-proxy prints endpoints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join_host_port(&self.ip, self.port))
    }
}

/// Where traffic of one kind (internal: to the ClusterIP; external: to NodePorts, external and
/// load-balancer IPs) goes after traffic policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "endpoints", rename_all = "lowercase")]
pub enum EndpointChoice {
    /// Spread over these endpoints with equal probability.
    Endpoints(Vec<ResolvedEndpoint>),
    /// No usable endpoint anywhere in the cluster: kube-proxy rejects (ICMP port unreachable).
    Reject,
    /// Traffic policy Local and no usable endpoint on this node: kube-proxy drops.
    Drop,
}

impl EndpointChoice {
    pub fn endpoints(&self) -> &[ResolvedEndpoint] {
        match self {
            EndpointChoice::Endpoints(e) => e,
            _ => &[],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancerIP,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIP => "cluster IP",
            FrontendKind::NodePort => "node port",
            FrontendKind::ExternalIP => "external IP",
            FrontendKind::LoadBalancerIP => "loadbalancer IP",
        })
    }
}

/// An address and port at which a service port is reached. NodePorts have no address of their
/// own: they are reached on the node's NodePort addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Some(ip) => write!(f, "{ip}:{}", self.port),
            None => write!(f, "*:{}", self.port),
        }
    }
}

/// Everything a backend needs to program one service port in one IP family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedServicePort {
    pub name: ServicePortName,
    pub family: IpFamily,
    pub service_type: ServiceType,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// internalTrafficPolicy=Local.
    pub internal_policy_local: bool,
    /// externalTrafficPolicy=Local on a service that is externally accessible.
    pub external_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// The topology mode the cluster endpoints were filtered with, if any
    /// (`PreferSameZone`, `PreferSameNode`).
    pub topology_mode: Option<&'static str>,
    /// Endpoints for Cluster traffic policy (topology and terminating fallback applied).
    pub cluster_endpoints: Vec<ResolvedEndpoint>,
    /// Endpoints on this node for Local traffic policy (terminating fallback applied).
    pub local_endpoints: Vec<ResolvedEndpoint>,
    /// Any ready or serving-terminating endpoint anywhere: without one, traffic is rejected.
    pub has_any_endpoints: bool,
    /// Traffic to the ClusterIP.
    pub internal: EndpointChoice,
    /// Traffic to NodePorts, external IPs and load-balancer IPs (None: not externally accessible).
    pub external: Option<EndpointChoice>,
}

impl ResolvedServicePort {
    pub fn frontends(&self) -> Vec<Frontend> {
        let mut out = vec![Frontend { kind: FrontendKind::ClusterIP, ip: Some(self.cluster_ip), port: self.port }];
        out.extend(self.external_ips.iter().map(|ip| Frontend {
            kind: FrontendKind::ExternalIP,
            ip: Some(*ip),
            port: self.port,
        }));
        out.extend(self.load_balancer_ips.iter().map(|ip| Frontend {
            kind: FrontendKind::LoadBalancerIP,
            ip: Some(*ip),
            port: self.port,
        }));
        if let Some(np) = self.node_port {
            out.push(Frontend { kind: FrontendKind::NodePort, ip: None, port: np });
        }
        out
    }

    /// kube-proxy's `UsesClusterEndpoints`: internal traffic policy Cluster, or reachable from
    /// outside at all — even with externalTrafficPolicy=Local, pods and the node itself reach an
    /// external frontend through the cluster-wide endpoints (the short-circuit).
    pub fn uses_cluster_endpoints(internal_local: bool, external_accessible: bool) -> bool {
        !internal_local || external_accessible
    }

    /// kube-proxy's `UsesLocalEndpoints`.
    pub fn uses_local_endpoints(internal_local: bool, external_local: bool) -> bool {
        internal_local || external_local
    }
}

/// Resolves every service port of the cluster for one node and family, ordered by name.
pub fn resolve(state: &ClusterState, ctx: &NodeContext, family: IpFamily) -> Vec<ResolvedServicePort> {
    state.services.values().flat_map(|svc| resolve_service(state, ctx, family, svc)).collect()
}

/// Resolves the ports of one Service. A Service without a ClusterIP of this family has nothing
/// to program in this family (kube-proxy's per-family proxiers skip it too).
pub fn resolve_service(
    state: &ClusterState,
    ctx: &NodeContext,
    family: IpFamily,
    svc: &Service,
) -> Vec<ResolvedServicePort> {
    let Some(cluster_ip) = svc.cluster_ips.iter().copied().find(|ip| family.matches(ip)) else {
        return Vec::new();
    };
    let in_family = |ips: &[IpAddr]| ips.iter().copied().filter(|ip| family.matches(ip)).collect::<Vec<_>>();
    let external_ips = in_family(&svc.external_ips);
    let load_balancer_ips = in_family(&svc.load_balancer_ips);
    let source_ranges: Vec<IpNet> =
        svc.load_balancer_source_ranges.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect();

    svc.ports
        .iter()
        .map(|port| {
            let name = ServicePortName { service: svc.name.clone(), port: port.name.clone(), protocol: port.protocol };
            let external_accessible =
                port.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
            let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
            let external_local = external_accessible && svc.external_traffic_policy == TrafficPolicy::Local;
            let endpoints = state.endpoints_for(&name, family);
            let cat = categorize(&endpoints, ctx, internal_local, external_accessible, external_local);

            let choice = |local_policy: bool| {
                if !cat.has_any {
                    EndpointChoice::Reject
                } else if local_policy {
                    if cat.local.is_empty() {
                        EndpointChoice::Drop
                    } else {
                        EndpointChoice::Endpoints(cat.local.clone())
                    }
                } else {
                    EndpointChoice::Endpoints(cat.cluster.clone())
                }
            };
            let internal = choice(internal_local);
            let external = external_accessible.then(|| choice(external_local));

            ResolvedServicePort {
                family,
                service_type: svc.service_type,
                cluster_ip,
                port: port.port,
                protocol: port.protocol,
                node_port: port.node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                load_balancer_source_ranges: if load_balancer_ips.is_empty() {
                    Vec::new()
                } else {
                    source_ranges.clone()
                },
                internal_policy_local: internal_local,
                external_policy_local: external_local,
                health_check_node_port: if external_local { svc.health_check_node_port } else { None },
                affinity_timeout: svc.session_affinity_timeout,
                topology_mode: cat.topology_mode,
                cluster_endpoints: cat.cluster,
                local_endpoints: cat.local,
                has_any_endpoints: cat.has_any,
                internal,
                external,
                name,
            }
        })
        .collect()
}

struct Categorized {
    cluster: Vec<ResolvedEndpoint>,
    local: Vec<ResolvedEndpoint>,
    has_any: bool,
    topology_mode: Option<&'static str>,
}

const PREFER_SAME_NODE: &str = "PreferSameNode";
const PREFER_SAME_ZONE: &str = "PreferSameZone";

/// kube-proxy's `CategorizeEndpoints`.
fn categorize(
    endpoints: &[MergedEndpoint],
    ctx: &NodeContext,
    internal_local: bool,
    external_accessible: bool,
    external_local: bool,
) -> Categorized {
    let resolved = |m: &MergedEndpoint| ResolvedEndpoint {
        ip: m.endpoint.address,
        port: m.port,
        node_name: m.endpoint.node_name.clone(),
        // kube-proxy's isLocal: only a non-empty node name matches (an endpoint with
        // `nodeName: ""` is not local to a proxy rendering for no node in particular).
        is_local: !ctx.node_name.is_empty() && m.endpoint.node_name.as_deref() == Some(ctx.node_name.as_str()),
        ready: m.endpoint.ready,
        serving: m.endpoint.serving,
        terminating: m.endpoint.terminating,
    };
    let all: Vec<ResolvedEndpoint> = endpoints.iter().map(resolved).collect();
    let serving_terminating = |e: &&ResolvedEndpoint| e.serving && e.terminating;

    let mut out = Categorized { cluster: Vec::new(), local: Vec::new(), has_any: false, topology_mode: None };
    let uses_cluster = ResolvedServicePort::uses_cluster_endpoints(internal_local, external_accessible);
    let uses_local = ResolvedServicePort::uses_local_endpoints(internal_local, external_local);

    if uses_cluster {
        let mode = topology_mode(endpoints, ctx);
        out.topology_mode = mode;
        out.cluster = endpoints
            .iter()
            .zip(&all)
            .filter(|(m, _)| m.endpoint.ready && available_for_topology(&m.endpoint, mode, ctx))
            .map(|(_, e)| e.clone())
            .collect();
        // With no ready endpoint, fall back to serving-and-terminating ones, ignoring topology:
        // a best effort not to drop connections during a rollout.
        if out.cluster.is_empty() {
            out.cluster = all.iter().filter(serving_terminating).cloned().collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local {
        return out;
    }
    let usable = |e: &&ResolvedEndpoint| e.ready || (e.serving && e.terminating);
    out.has_any |= all.iter().any(|e| usable(&e));
    let local_ready: Vec<ResolvedEndpoint> = all.iter().filter(|e| e.is_local && e.ready).cloned().collect();
    out.local = if !local_ready.is_empty() {
        local_ready
    } else {
        all.iter().filter(|e| e.is_local && e.serving && e.terminating).cloned().collect()
    };
    out
}

/// kube-proxy's `topologyModeFromHints` with PreferSameTrafficDistribution enabled (its default
/// since v1.34): hints are honoured only when *every* ready endpoint carries them and at least one
/// names this node (node hints) or this node's zone (zone hints).
fn topology_mode(endpoints: &[MergedEndpoint], ctx: &NodeContext) -> Option<&'static str> {
    let ready = endpoints.iter().map(|m| &m.endpoint).filter(|e| e.ready);
    let (mut all_node_hints, mut for_node, mut all_zone_hints, mut for_zone) = (true, false, true, false);
    let mut any = false;
    for ep in ready {
        any = true;
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(&ctx.node_name) {
            for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ctx.zone.as_ref().is_some_and(|z| ep.zone_hints.contains(z)) {
            for_zone = true;
        }
    }
    if !any {
        return None;
    }
    if all_node_hints && for_node {
        return Some(PREFER_SAME_NODE);
    }
    if all_zone_hints && for_zone {
        return Some(PREFER_SAME_ZONE);
    }
    None
}

fn available_for_topology(ep: &Endpoint, mode: Option<&str>, ctx: &NodeContext) -> bool {
    match mode {
        None => true,
        Some(PREFER_SAME_NODE) => ep.node_hints.contains(&ctx.node_name),
        Some(_) => ctx.zone.as_ref().is_some_and(|z| ep.zone_hints.contains(z)),
    }
}

#[cfg(test)]
mod tests;
