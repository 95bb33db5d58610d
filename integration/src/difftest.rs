//! Differential testing against the real kube-proxy: a seeded generator of clusters (as API
//! objects), the flows to send through each node proxy, what a flow looked like from outside,
//! and the comparison — with the one table of intended differences.
//!
//! Endpoints are the lab's pods (ep1…epN at 10.244.N.2, answering TCP and UDP 8080), labelled as
//! on this node or on others; so both proxies' answers are real packets from real responders.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::clusters::Rng;
use crate::lab::{Lab, NODE, POD_PORT, pod_gw, pod_ip};
use crate::{Ns, Outcome, Proto, enter, request};

/// The difftest's namespace for its objects.
pub const NAMESPACE: &str = "diff";
const OTHER_NODES: [&str; 2] = ["node-b", "node-c"];
/// The sentinel Service, created last: once it answers, every object before it is programmed.
pub const SENTINEL_IP: &str = "10.96.255.254";

/// One service port and how it can be reached.
#[derive(Clone, Debug)]
pub struct PortInfo {
    /// None: SCTP (programmed by both proxies; the lab's responders do not speak it, so no flows).
    pub proto: Option<Proto>,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// One generated Service, with its objects (for the reproducer) and what flows need.
#[derive(Clone, Debug)]
pub struct DiffService {
    pub name: String,
    pub cluster_ip: IpAddr,
    /// The IPv6 ClusterIP of a dual-stack Service.
    pub cluster_ip6: Option<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub lb_ips: Vec<IpAddr>,
    pub ports: Vec<PortInfo>,
    pub affinity: bool,
    /// The lab pods (N of epN) among its endpoints.
    pub endpoint_pods: Vec<usize>,
    /// The Service, its status and its slices, as created.
    pub objects: Vec<Value>,
}

pub struct DiffCluster {
    pub seed: u64,
    pub services: Vec<DiffService>,
}

impl DiffCluster {
    /// Every object to create, in order (Services, then their status, then slices; the
    /// sentinel last).
    pub fn objects(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.services.iter().flat_map(|s| s.objects.clone()).collect();
        v.extend(sentinel());
        v
    }
}

/// The Node both twin proxies run as (identical addresses), in zone-a.
pub fn node_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.1"}, {"type": "InternalIP", "address": "fd00:1::1"}]}
    })
}

pub fn namespace_object() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
}

fn sentinel() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zz-sentinel", "namespace": NAMESPACE},
               "spec": {"clusterIP": SENTINEL_IP, "ports": [{"name": "p", "port": 80, "protocol": "TCP", "targetPort": POD_PORT}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "zz-sentinel-1", "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": "zz-sentinel"}},
               "addressType": "IPv4", "ports": [{"name": "p", "port": POD_PORT, "protocol": "TCP"}],
               "endpoints": [{"addresses": [pod_ip(1)], "nodeName": "node-b", "conditions": {"ready": true}}]}),
    ]
}

/// `services` Services for a seed, endpoints drawn from `pods` lab pods.
pub fn cluster(seed: u64, services: usize, pods: usize) -> DiffCluster {
    let mut r = Rng::new(seed ^ 0xD1FF);
    let services = (0..services).map(|i| service(&mut r, i, pods)).collect();
    DiffCluster { seed, services }
}

fn service(r: &mut Rng, i: usize, pods: usize) -> DiffService {
    let name = format!("svc{i}");
    let ty = *r.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
    let cluster_ip: IpAddr = format!("10.96.{}.{}", 10 + i / 250, i % 250 + 1).parse().unwrap();
    let mut spec = json!({"type": ty, "clusterIP": cluster_ip.to_string()});
    let cluster_ip6: Option<IpAddr> = r.chance(20).then(|| format!("fd00:96::{:x}", 0x100 + i).parse().unwrap());
    if let Some(v6) = cluster_ip6 {
        spec["ipFamilyPolicy"] = json!("RequireDualStack");
        spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
        spec["clusterIPs"] = json!([cluster_ip.to_string(), v6.to_string()]);
    }
    if ty != "ClusterIP" {
        let etp = *r.pick(&["Cluster", "Local"]);
        spec["externalTrafficPolicy"] = json!(etp);
        if ty == "LoadBalancer" && etp == "Local" {
            // Explicit, in a range of its own: an allocated one could take a node port a later
            // Service asks for.
            spec["healthCheckNodePort"] = json!(32000 + i);
        }
    }
    spec["internalTrafficPolicy"] = json!(*r.pick(&["Cluster", "Local"]));
    let external_ips: Vec<IpAddr> =
        if r.chance(25) { vec![format!("198.51.{}.{}", 100 + i / 250, i % 250 + 1).parse().unwrap()] } else { vec![] };
    if !external_ips.is_empty() {
        spec["externalIPs"] = json!(external_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>());
    }
    let affinity = r.chance(15);
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 600}});
    }
    let lb_ips: Vec<IpAddr> = if ty == "LoadBalancer" {
        vec![format!("203.0.{}.{}", 113 + i / 250, i % 250 + 1).parse().unwrap()]
    } else {
        vec![]
    };
    if !lb_ips.is_empty() && r.chance(40) {
        // The client (10.0.1.2) and the node (10.0.1.1) are inside, the pod client is not.
        spec["loadBalancerSourceRanges"] = json!(["10.0.1.0/30"]);
    }
    let nports = 1 + r.below(2) as usize;
    let mut ports = Vec::new();
    let mut spec_ports = Vec::new();
    let mut slice_ports = Vec::new();
    for p in 0..nports {
        let proto = match r.below(20) {
            0 => None,
            1..=7 => Some(Proto::Udp),
            _ => Some(Proto::Tcp),
        };
        let pname = format!("p{p}");
        let port = 80 + p as u16;
        let node_port = (ty != "ClusterIP").then(|| 30000 + (i * 2 + p) as u16);
        let pr = match proto {
            None => "SCTP",
            Some(Proto::Udp) => "UDP",
            Some(Proto::Tcp) => "TCP",
        };
        // A named target port sometimes: the proxies use the slices' port numbers either way.
        let target = if r.chance(30) { json!("web") } else { json!(POD_PORT) };
        let mut sp = json!({"name": pname, "port": port, "protocol": pr, "targetPort": target});
        if let Some(np) = node_port {
            sp["nodePort"] = json!(np);
        }
        spec_ports.push(sp);
        slice_ports.push(json!({"name": pname, "port": POD_PORT, "protocol": pr}));
        ports.push(PortInfo { proto, port, node_port });
    }
    spec["ports"] = json!(spec_ports);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec});
    let mut objects = vec![svc.clone()];
    if !lb_ips.is_empty() {
        let mut st = svc.clone();
        st["status"] = json!({"loadBalancer": {"ingress": lb_ips.iter().map(|i| json!({"ip": i.to_string()})).collect::<Vec<_>>()}});
        objects.push(st);
    }
    // Endpoints: 0–3 distinct lab pods, on this node or another, ready / serving-terminating /
    // not ready; sometimes zone hints (all or none of the ready ones).
    let mut candidates: Vec<usize> = (1..=pods).collect();
    let n = *r.pick(&[0usize, 1, 2, 2, 3, 3]);
    let hints = r.chance(15);
    let mut endpoints = Vec::new();
    let mut endpoint_pods = Vec::new();
    for _ in 0..n.min(candidates.len()) {
        let pod = candidates.remove(r.below(candidates.len() as u64) as usize);
        let node = if r.chance(35) { NODE } else { *r.pick(&OTHER_NODES) };
        let cond = match r.below(10) {
            0 | 1 => json!({"ready": false, "serving": true, "terminating": true}),
            2 => json!({"ready": false, "serving": false, "terminating": false}),
            _ => json!({"ready": true, "serving": true, "terminating": false}),
        };
        let mut ep = json!({"addresses": [pod_ip(pod)], "nodeName": node, "conditions": cond});
        if hints {
            ep["hints"] = json!({"forZones": [{"name": *r.pick(&["zone-a", "zone-b"])}]});
        }
        endpoints.push(ep);
        endpoint_pods.push(pod);
    }
    if n > 0 || r.chance(50) {
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": endpoints
        }));
        if cluster_ip6.is_some() {
            // The same pods and conditions in an IPv6 slice.
            let v6: Vec<Value> = endpoints
                .iter()
                .zip(&endpoint_pods)
                .map(|(e, pod)| {
                    let mut e = e.clone();
                    e["addresses"] = json!([format!("fd00:244:{pod}::2")]);
                    e
                })
                .collect();
            objects.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-v6"), "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv6", "ports": slice_ports, "endpoints": v6
            }));
        }
    }
    if hints {
        objects[0]["spec"]["trafficDistribution"] = json!("PreferClose");
    }
    DiffService { name, cluster_ip, cluster_ip6, external_ips, lb_ips, ports, affinity, endpoint_pods, objects }
}

/// Where a flow comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// Off-cluster client 10.0.1.2.
    Client,
    /// A pod on this node, 10.244.50.2.
    PodClient,
    /// The node itself.
    Node,
    /// Lab pod N (hairpin when it is an endpoint).
    Pod(usize),
}

/// One flow: a source sending new connections to a frontend.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    /// Index into the cluster's services (None: not a Service's frontend).
    pub service: Option<usize>,
    pub what: String,
    pub from: Src,
    pub proto: Proto,
    pub to: SocketAddr,
    /// ClientIP affinity: one endpoint is expected, any of them.
    pub pinned: bool,
}

/// Every flow to send for a cluster.
pub fn flows(c: &DiffCluster) -> Vec<FlowSpec> {
    let mut out = Vec::new();
    for (i, s) in c.services.iter().enumerate() {
        for p in &s.ports {
            let Some(proto) = p.proto else { continue };
            let mut add = |what: &str, from: Src, ip: IpAddr, port: u16| {
                out.push(FlowSpec {
                    service: Some(i),
                    what: format!("{}:{} {what}", s.name, p.port),
                    from,
                    proto,
                    to: SocketAddr::new(ip, port),
                    pinned: s.affinity,
                });
            };
            if let Some(v6) = s.cluster_ip6 {
                for src in [Src::Client, Src::PodClient, Src::Node] {
                    add("IPv6 cluster IP", src, v6, p.port);
                }
                if let Some(np) = p.node_port {
                    add("IPv6 node port", Src::Client, "fd00:1::1".parse().unwrap(), np);
                }
            }
            for src in [Src::Client, Src::PodClient, Src::Node] {
                add("cluster IP", src, s.cluster_ip, p.port);
            }
            if let Some(np) = p.node_port {
                for src in [Src::Client, Src::PodClient, Src::Node] {
                    add("node port", src, "10.0.1.1".parse().unwrap(), np);
                }
            }
            for ip in &s.external_ips {
                for src in [Src::Client, Src::PodClient] {
                    add("external IP", src, *ip, p.port);
                }
            }
            for ip in &s.lb_ips {
                for src in [Src::Client, Src::PodClient] {
                    add("load-balancer IP", src, *ip, p.port);
                }
            }
            if let Some(&pod) = s.endpoint_pods.first() {
                add("cluster IP from an endpoint's own pod (hairpin)", Src::Pod(pod), s.cluster_ip, p.port);
            }
        }
        if i % 4 == 0
            && let Some(p) = s.ports.iter().find(|p| p.proto.is_some())
        {
            out.push(FlowSpec {
                service: Some(i),
                what: format!("{}:{} unused port of the cluster IP", s.name, p.port + 1000),
                from: Src::Client,
                proto: p.proto.unwrap(),
                to: SocketAddr::new(s.cluster_ip, p.port + 1000),
                pinned: false,
            });
        }
    }
    for ip in ["10.96.250.250", "10.96.9.9"] {
        out.push(FlowSpec {
            service: None,
            what: format!("unallocated cluster IP {ip}"),
            from: Src::Client,
            proto: Proto::Tcp,
            to: format!("{ip}:80").parse().unwrap(),
            pinned: false,
        });
    }
    out
}

/// What a flow looked like from outside.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// Answered by these endpoints; the sources they saw (`link` = the node's address on the
    /// endpoint's link, i.e. masqueraded or sent by the node; else the address itself).
    Answered {
        responders: BTreeSet<String>,
        sources: BTreeSet<String>,
    },
    /// Affinity: always the same one endpoint (which one is chance); whether that endpoint is
    /// the sending pod itself (hairpin), and the kind of source it saw.
    Pinned {
        hairpin: bool,
        sources: BTreeSet<String>,
    },
    Refused,
    Dropped,
    /// Some requests answered and some not, or an error: printed in full.
    Mixed(String),
}

fn source_token(responder: &str, seen: IpAddr) -> String {
    let n: usize = responder.trim_start_matches("ep").parse().unwrap_or(0);
    if seen.to_string() == pod_gw(n) || seen.to_string() == format!("fd00:244:{n}::1") {
        "link".into()
    } else {
        seen.to_string()
    }
}

/// Sends one flow's requests from the current thread (already in the source's namespace).
fn observe_one(f: &FlowSpec, answered_n: usize) -> Seen {
    let timeout = Duration::from_millis(400);
    let first = request(f.proto, f.to, None, timeout);
    let mut outcomes = vec![first.clone()];
    let total = match first {
        Outcome::Answered { .. } => answered_n,
        _ => 2,
    };
    while outcomes.len() < total {
        outcomes.push(request(f.proto, f.to, None, timeout));
    }
    let (mut responders, mut sources, mut other) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    let (mut refused, mut dropped) = (0, 0);
    for o in &outcomes {
        match o {
            Outcome::Answered { responder, seen_source } => {
                sources.insert(source_token(responder, *seen_source));
                responders.insert(responder.clone());
            }
            Outcome::Refused => refused += 1,
            Outcome::Timeout => dropped += 1,
            // A timed-out bound connect, or a packet the node itself sent that a rule dropped
            // (the kernel answers the sender with EPERM): both are drops.
            Outcome::Other(e) if e.contains("in progress") || e.contains("Operation not permitted") => dropped += 1,
            Outcome::Other(e) => other.push(e.clone()),
        }
    }
    let n = outcomes.len();
    if responders.is_empty() && refused == n {
        Seen::Refused
    } else if responders.is_empty() && dropped == n {
        Seen::Dropped
    } else if refused + dropped == 0 && other.is_empty() {
        if f.pinned && responders.len() == 1 {
            let hairpin = matches!(f.from, Src::Pod(k) if responders.contains(&format!("ep{k}")));
            Seen::Pinned { hairpin, sources }
        } else {
            Seen::Answered { responders, sources }
        }
    } else {
        Seen::Mixed(format!("{outcomes:?}"))
    }
}

/// The namespace a source sends from.
pub fn source_ns(lab: &Lab, from: Src) -> Ns {
    match from {
        Src::Client => lab.client.clone(),
        Src::PodClient => lab.pod_client.clone(),
        Src::Node => lab.node.clone(),
        Src::Pod(n) => lab.pods[n - 1].clone(),
    }
}

/// Observes every flow in `lab`, `threads` at a time (bounded: each flow sends at most
/// `answered_n` requests of at most 400 ms each).
pub fn observe_all(lab: &Lab, flows: &[FlowSpec], answered_n: usize, threads: usize) -> Vec<Seen> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Seen>>> = Mutex::new(vec![None; flows.len()]);
    let namespaces: Vec<Ns> = flows.iter().map(|f| source_ns(lab, f.from)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= flows.len() {
                        return;
                    }
                    enter(&namespaces[i].name);
                    let seen = observe_one(&flows[i], answered_n);
                    results.lock().unwrap()[i] = Some(seen);
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|s| s.expect("observed")).collect()
}

/// Whether two answers to the same flow agree. Equal answers do; so do two affinity answers that
/// pinned the sending pod to different endpoints by chance — one to itself (a hairpin, which
/// both kube-proxy modes always masquerade: its source must be the node's link address) and one
/// to another endpoint.
pub fn equivalent(a: &Seen, b: &Seen) -> bool {
    match (a, b) {
        (Seen::Pinned { hairpin: h1, sources: s1 }, Seen::Pinned { hairpin: h2, sources: s2 }) if h1 != h2 => {
            let link: BTreeSet<String> = ["link".to_string()].into();
            if *h1 { *s1 == link } else { *s2 == link }
        }
        _ => a == b,
    }
}

/// Merges two observations of the same flow (more requests, to see every endpoint).
pub fn merge(a: &Seen, b: &Seen) -> Seen {
    match (a, b) {
        (Seen::Answered { responders: r1, sources: s1 }, Seen::Answered { responders: r2, sources: s2 }) => {
            Seen::Answered { responders: r1 | r2, sources: s1 | s2 }
        }
        (a, _) => a.clone(),
    }
}

/// An intended difference between kube-proxy and kube-nftproxy that the differential suite
/// expects: when `applies` holds for a flow, the two answers may differ as described.
pub struct IntendedDifference {
    pub name: &'static str,
    pub why: &'static str,
    pub applies: fn(&FlowSpec, &Seen, &Seen) -> bool,
}

/// Every intended difference, in one place. Empty today: where kube-proxy defines a behaviour,
/// both of our backends follow it, and the suite asserts exactly that.
pub const INTENDED_DIFFERENCES: &[IntendedDifference] = &[];

/// A difference found, with what it takes to reproduce it.
pub fn reproducer(c: &DiffCluster, f: &FlowSpec, theirs: &Seen, ours: &Seen, mode: &str) -> String {
    let objects = f
        .service
        .map(|i| c.services[i].objects.iter().map(|o| serde_json::to_string(o).unwrap()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    format!(
        "seed {} ({mode} mode), flow {:?} {:?} → {} ({}):\n  kube-proxy:    {theirs:?}\n  kube-nftproxy: {ours:?}\n  objects:\n{objects}",
        c.seed, f.from, f.proto, f.to, f.what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_reproducible_and_flows_cover_every_frontend() {
        let a = cluster(3, 40, 4);
        let b = cluster(3, 40, 4);
        assert_eq!(
            a.objects().iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            b.objects().iter().map(|o| o.to_string()).collect::<Vec<_>>()
        );
        let f = flows(&a);
        for what in
            ["cluster IP", "node port", "load-balancer IP", "hairpin", "unused port", "unallocated", "IPv6 cluster IP"]
        {
            assert!(f.iter().any(|f| f.what.contains(what)), "no {what} flow");
        }
        // Every object converts cleanly with the manifest loader too.
        let mut l = nftproxy_manifest::Loaded::default();
        for o in a.objects() {
            l.add_value(o);
        }
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn affinity_pinning_to_different_endpoints_is_not_a_difference_but_anything_else_is() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let to_self = Seen::Pinned { hairpin: true, sources: set(&["link"]) };
        let to_other = Seen::Pinned { hairpin: false, sources: set(&["10.244.3.2"]) };
        assert!(equivalent(&to_self, &to_other) && equivalent(&to_other, &to_self));
        let unmasqueraded_self = Seen::Pinned { hairpin: true, sources: set(&["10.244.3.2"]) };
        assert!(!equivalent(&unmasqueraded_self, &to_other), "a hairpin must be masqueraded");
        let a = Seen::Answered { responders: set(&["ep1", "ep2"]), sources: set(&["link"]) };
        let b = Seen::Answered { responders: set(&["ep1"]), sources: set(&["link"]) };
        assert!(!equivalent(&a, &b));
        assert!(!equivalent(&Seen::Refused, &Seen::Dropped));
        assert_eq!(merge(&a, &b), a);
    }
}
