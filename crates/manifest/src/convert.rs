//! k8s-openapi objects → service model, validating every field the proxy uses. Shared by the
//! manifest loader and the Kubernetes watcher. Pure: no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nftproxy_model::*;

/// Why one object could not be used: which object, which field, what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {message}")]
pub struct ObjectError {
    pub kind: &'static str,
    /// `namespace/name` (or `name` for cluster-scoped objects, `<unnamed>` when missing).
    pub object: String,
    pub field: String,
    pub message: String,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service with this label is handled by another proxy (kube-proxy skips it too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// A Service with this label has no ClusterIP to program.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Used by kube-proxy when `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// kube-proxy's `netutils.ParseIPSloppy` (Go's pre-1.17 `net.ParseIP`): an IPv4 field with
/// leading zeros is decimal (`010.096.000.010` is 10.96.0.10), not octal and not an error.
/// Surrounding whitespace is ignored.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(v4) = parse_ipv4_sloppy(s) {
        return Some(IpAddr::V4(v4));
    }
    // An IPv6 address ending in a sloppy dotted quad (`::ffff:010.1.2.3`).
    let (head, tail) = s.rsplit_once(':')?;
    let v4 = parse_ipv4_sloppy(tail)?;
    format!("{head}:{v4}").parse().ok()
}

fn parse_ipv4_sloppy(s: &str) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse::<u16>().ok().filter(|v| *v <= 255)? as u8;
    }
    parts.next().is_none().then_some(std::net::Ipv4Addr::from(octets))
}

/// kube-proxy's `netutils.ParseCIDRSloppy`: `ParseIPSloppy` for the address; the network is
/// the address masked to the prefix.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, len) = s.trim().split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNet::new(ip, len.parse().ok()?).ok().map(|n| n.trunc())
}

/// A Service the proxy deliberately does not program, and why (not an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    ExternalName,
    Headless,
    OtherProxy(String),
}

pub(crate) fn object_name(meta: &ObjectMeta) -> String {
    display_name(meta.namespace.as_deref(), meta.name.as_deref())
}

/// How warnings name an object: `namespace/name`, `name` without a namespace (cluster-scoped
/// objects), `<unnamed>` for a missing or empty name (an empty one is "missing" to [`Ctx::name`]
/// too, and a warning must name *something*).
pub(crate) fn display_name(namespace: Option<&str>, name: Option<&str>) -> String {
    let name = name.filter(|n| !n.is_empty()).unwrap_or("<unnamed>");
    match namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

struct Ctx<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ObjectError {
        ObjectError { kind: self.kind, object: object_name(self.meta), field: field.into(), message: message.into() }
    }
    fn name(&self) -> Result<String, ObjectError> {
        match self.meta.name.as_deref() {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err(self.err("metadata.name", "missing")),
        }
    }
    fn namespace(&self) -> String {
        self.meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
    }
    fn ip(&self, field: String, s: &str) -> Result<IpAddr, ObjectError> {
        parse_ip_sloppy(s).ok_or_else(|| self.err(field, format!("{s:?} is not a valid IP address")))
    }
    fn cidr(&self, field: String, s: &str) -> Result<IpNet, ObjectError> {
        parse_cidr_sloppy(s).ok_or_else(|| self.err(field, format!("{s:?} is not a valid CIDR")))
    }
    fn port(&self, field: String, p: i32) -> Result<u16, ObjectError> {
        u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| self.err(field, format!("{p} is out of range 1-65535")))
    }
    fn protocol(&self, field: String, p: Option<&str>) -> Result<Protocol, ObjectError> {
        let p = p.unwrap_or("TCP");
        Protocol::from_k8s(p).ok_or_else(|| self.err(field, format!("unknown protocol {p:?} (want TCP, UDP or SCTP)")))
    }
    fn policy(&self, field: &str, p: Option<&str>) -> Result<TrafficPolicy, ObjectError> {
        match p.unwrap_or("") {
            "" | "Cluster" => Ok(TrafficPolicy::Cluster),
            "Local" => Ok(TrafficPolicy::Local),
            other => Err(self.err(field, format!("unknown traffic policy {other:?} (want Cluster or Local)"))),
        }
    }
}

/// Converts a Service. `Ok(Err(skipped))` for Services the proxy does not program.
pub fn service(svc: &core::Service) -> Result<Result<Service, Skipped>, ObjectError> {
    let cx = Ctx { kind: "Service", meta: &svc.metadata };
    let name = ServiceName::new(cx.namespace(), cx.name()?);
    let labels = svc.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return Ok(Err(Skipped::OtherProxy(proxy.clone())));
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Ok(Err(Skipped::Headless));
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Err(cx.err("spec", "missing"));
    };
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => return Ok(Err(Skipped::ExternalName)),
        other => return Err(cx.err("spec.type", format!("unknown service type {other:?}"))),
    };
    if spec.cluster_ip.as_deref() == Some("None") {
        return Ok(Err(Skipped::Headless));
    }

    let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, s)| cx.ip(format!("spec.clusterIPs[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?,
        (_, Some(ip)) if !ip.is_empty() => vec![cx.ip("spec.clusterIP".into(), ip)?],
        _ => return Err(cx.err("spec.clusterIP", "missing (not allocated yet?)")),
    };

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let f = |s: &str| format!("spec.ports[{i}].{s}");
        let port = cx.port(f("port"), p.port)?;
        let node_port = match p.node_port {
            Some(np) if np != 0 && service_type != ServiceType::ClusterIP => Some(cx.port(f("nodePort"), np)?),
            _ => None,
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(cx.port(f("targetPort"), *n)?),
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(cx.err(f("targetPort"), "empty name"));
            }
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        ports.push(ServicePort {
            name: p.name.as_deref().unwrap_or_default().into(),
            protocol: cx.protocol(f("protocol"), p.protocol.as_deref())?,
            port,
            node_port,
            target_port,
        });
    }

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| cx.ip(format!("spec.externalIPs[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;

    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer delivers to the node with the node as destination;
            // kube-proxy does not program the VIP.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
                load_balancer_ips.push(cx.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
            }
        }
    }

    // kube-proxy trims whitespace around each range and falls back to the annotation.
    let (ranges, field): (Vec<String>, &str) = match &spec.load_balancer_source_ranges {
        Some(r) if !r.is_empty() => (r.clone(), "spec.loadBalancerSourceRanges"),
        _ => match svc.metadata.annotations.as_ref().and_then(|a| a.get(SOURCE_RANGES_ANNOTATION)) {
            Some(a) => (
                a.split(',').map(str::to_string).filter(|s| !s.trim().is_empty()).collect(),
                "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]",
            ),
            None => (Vec::new(), ""),
        },
    };
    let load_balancer_source_ranges =
        ranges.iter().enumerate().map(|(i, s)| cx.cidr(format!("{field}[{i}]"), s)).collect::<Result<Vec<_>, _>>()?;

    let session_affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" | "" => None,
        "ClientIP" => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS as i32);
            match u32::try_from(t) {
                Ok(t) if (1..=86400).contains(&t) => Some(t),
                _ => {
                    return Err(cx.err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is out of range 1-86400"),
                    ));
                }
            }
        }
        other => {
            return Err(cx.err("spec.sessionAffinity", format!("unknown session affinity {other:?}")));
        }
    };

    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if p != 0 => Some(cx.port("spec.healthCheckNodePort".into(), p)?),
        _ => None,
    };

    Ok(Ok(Service {
        name,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        external_traffic_policy: cx.policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?,
        internal_traffic_policy: cx.policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?,
        health_check_node_port,
        session_affinity_timeout,
        traffic_distribution: spec.traffic_distribution.clone(),
    }))
}

/// Converts an EndpointSlice. Endpoints without addresses and ports without a number are
/// skipped, as kube-proxy's EndpointSliceCache does.
pub fn endpoint_slice(es: &discovery::EndpointSlice) -> Result<EndpointSlice, ObjectError> {
    let cx = Ctx { kind: "EndpointSlice", meta: &es.metadata };
    let name = cx.name()?;
    let namespace = cx.namespace();
    let service =
        es.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).filter(|s| !s.is_empty()).ok_or_else(
            || cx.err(format!("metadata.labels[{SERVICE_NAME_LABEL}]"), "missing: the slice belongs to no Service"),
        )?;
    let address_type = match es.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => AddressType::Fqdn,
        other => return Err(cx.err("addressType", format!("unknown address type {other:?}"))),
    };

    // Sized once: pushed one by one, ten endpoints held room for sixteen (120 bytes each).
    let mut endpoints = Vec::with_capacity(es.endpoints.len());
    if let Some(family) = address_type.family() {
        for (i, ep) in es.endpoints.iter().enumerate() {
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            let field = format!("endpoints[{i}].addresses[0]");
            let address = cx.ip(field.clone(), addr)?;
            if !family.matches(&address) {
                return Err(
                    cx.err(field, format!("{addr} is not an {family} address (addressType {})", es.address_type))
                );
            }
            let cond = ep.conditions.clone().unwrap_or_default();
            let ready = cond.ready.unwrap_or(true);
            let hints = ep.hints.as_ref();
            endpoints.push(Endpoint {
                address,
                ready,
                serving: cond.serving.unwrap_or(ready),
                terminating: cond.terminating.unwrap_or(false),
                node_name: ep.node_name.as_deref().map(Into::into),
                zone: ep.zone.as_deref().map(Into::into),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default(),
            });
        }
    }

    let mut ports = Vec::new();
    for (i, p) in es.ports.iter().flatten().enumerate() {
        let Some(port) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.as_deref().unwrap_or_default().into(),
            protocol: cx.protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: cx.port(format!("ports[{i}].port"), port)?,
        });
    }

    Ok(EndpointSlice {
        service: ServiceName::new(namespace.clone(), service.clone()),
        namespace: namespace.into(),
        name: name.into(),
        address_type,
        endpoints,
        ports,
        trigger_time: es.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER_TIME_ANNOTATION)).cloned(),
    })
}

/// Converts a Node: InternalIP addresses first, then ExternalIP, and the zone label.
pub fn node(node: &core::Node) -> Result<Node, ObjectError> {
    let cx = Ctx { kind: "Node", meta: &node.metadata };
    let name = cx.name()?;
    let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut addresses = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in addrs.into_iter().flatten().enumerate() {
            if a.type_ == wanted {
                addresses.push(cx.ip(format!("status.addresses[{i}].address"), &a.address)?);
            }
        }
    }
    let spec = node.spec.as_ref();
    let pod_cidrs = match spec.and_then(|s| s.pod_cidrs.as_ref()).filter(|c| !c.is_empty()) {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| cx.cidr(format!("spec.podCIDRs[{i}]"), c))
            .collect::<Result<Vec<_>, _>>()?,
        None => match spec.and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty()) {
            Some(c) => vec![cx.cidr("spec.podCIDR".into(), c)?],
            None => Vec::new(),
        },
    };
    Ok(Node {
        name,
        addresses,
        zone: node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned(),
        pod_cidrs,
    })
}

/// Converts a `networking.k8s.io/v1` ServiceCIDR: its name and `spec.cidrs`.
pub fn service_cidr(sc: &k8s_openapi::api::networking::v1::ServiceCIDR) -> Result<(String, Vec<IpNet>), ObjectError> {
    let cx = Ctx { kind: "ServiceCIDR", meta: &sc.metadata };
    let name = cx.name()?;
    let cidrs = sc
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| cx.cidr(format!("spec.cidrs[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, cidrs))
}
