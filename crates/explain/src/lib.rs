//! `explain`: what the proxy does with one packet (source, destination, protocol, port), from the
//! service model alone — no kernel. It answers in the terms of the rules both backends program:
//! which frontend matches, which Service port it is, which endpoints are candidates and with what
//! probability, whether the source is masqueraded and why, affinity, or why the packet is
//! rejected or dropped. For the iptables backend it also names kube-proxy's chains on the path
//! with each rule's `--probability`. Pure: no I/O.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use nftproxy_model::{
    ClusterState, EndpointChoice, FrontendKind, IpFamily, LocalTraffic, NodeContext, Protocol, ResolvedEndpoint,
    ResolvedServicePort, join_host_port, resolve,
};
use serde::Serialize;

/// The packet to explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
    /// The interface the packet arrives on (for interface-based local-traffic detection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iifname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// `ip:port`
    pub endpoint: String,
    pub node: Option<String>,
    pub local: bool,
    pub terminating: bool,
    /// Chance of being picked for a new connection.
    pub probability: f64,
    /// The endpoint sends to itself through the Service: masqueraded (hairpin).
    pub hairpin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Verdict {
    /// DNAT to one of the candidates.
    Dnat { candidates: Vec<Candidate> },
    /// ICMP/TCP reject.
    Reject { reason: String },
    /// Silently dropped.
    Drop { reason: String },
    /// No rule of ours matches: the packet goes on as if the proxy did not exist.
    NotOurs { reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesStep {
    pub table: &'static str,
    pub chain: String,
    /// What the rule that leads on matches, in words.
    pub rule: String,
    /// `-m statistic --mode random --probability P` of the rule, if it has one.
    pub probability: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub flow: Flow,
    /// `ns/svc:port`
    pub service_port: Option<String>,
    /// "cluster IP", "node port", "external IP", "loadbalancer IP" (kube-proxy's words)
    pub frontend: Option<String>,
    /// Which endpoint list applies: internal (ClusterIP) or external traffic, and its policy.
    pub traffic: Option<String>,
    pub verdict: Verdict,
    /// Whether the endpoint sees the node's address instead of the client's.
    pub masquerade: bool,
    pub masquerade_reason: String,
    /// ClientIP session affinity timeout (seconds).
    pub affinity_seconds: Option<u32>,
    pub notes: Vec<String>,
    /// kube-proxy's iptables chains on the way (when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iptables: Option<Vec<IptablesStep>>,
}

/// How the local-traffic detector decides, for the text.
fn describe_local(lt: &LocalTraffic) -> String {
    match lt {
        LocalTraffic::Unknown => "no detector".into(),
        LocalTraffic::Cidr(n) => format!("pod CIDR {n}"),
        LocalTraffic::Interface(i) => format!("input interface {i}"),
        LocalTraffic::InterfacePrefix(p) => format!("input interface {p}*"),
    }
}

/// A load-balancer IP as source, let through the firewall by kube-proxy's `allowFromNode`.
fn allowed_from_node(p: &ResolvedServicePort, ctx: &NodeContext, src: &IpAddr) -> bool {
    p.load_balancer_ips.contains(src) && ctx.source_ranges_allow_node(&p.load_balancer_source_ranges, p.family)
}

fn in_cidrs(ip: &IpAddr, cidrs: &[IpNet]) -> bool {
    cidrs.iter().any(|c| c.contains(ip))
}

/// Whether NodePorts accept `dst` (the model's [`NodeContext::takes_nodeports`]; never on
/// loopback, as in kube-proxy's nftables mode).
fn nodeport_address(ctx: &NodeContext, dst: &IpAddr) -> bool {
    !dst.is_loopback() && ctx.takes_nodeports(dst)
}

fn matching_frontend(p: &ResolvedServicePort, f: &Flow, ctx: &NodeContext) -> Option<FrontendKind> {
    if p.protocol != f.protocol {
        return None;
    }
    if f.dst == p.cluster_ip && f.dport == p.port {
        return Some(FrontendKind::ClusterIP);
    }
    if p.external_ips.contains(&f.dst) && f.dport == p.port {
        return Some(FrontendKind::ExternalIP);
    }
    if p.load_balancer_ips.contains(&f.dst) && f.dport == p.port {
        return Some(FrontendKind::LoadBalancerIP);
    }
    if p.node_port == Some(f.dport) && nodeport_address(ctx, &f.dst) {
        return Some(FrontendKind::NodePort);
    }
    None
}

fn candidates(eps: &[ResolvedEndpoint], f: &Flow) -> Vec<Candidate> {
    let n = eps.len() as f64;
    eps.iter()
        .map(|e| Candidate {
            endpoint: join_host_port(&e.ip, e.port),
            node: e.node_name.as_deref().map(str::to_string),
            local: e.is_local,
            terminating: e.terminating,
            probability: 1.0 / n,
            hairpin: e.ip == f.src,
        })
        .collect()
}

/// Explains one packet arriving at (or sent from) this node.
pub fn explain(state: &ClusterState, ctx: &NodeContext, flow: Flow, with_iptables: bool) -> Explanation {
    let family = IpFamily::of(&flow.dst);
    let ports = resolve(state, ctx, family);
    let mut ex = Explanation {
        flow: flow.clone(),
        service_port: None,
        frontend: None,
        traffic: None,
        verdict: Verdict::NotOurs { reason: String::new() },
        masquerade: false,
        masquerade_reason: "not a Service frontend: no NAT".into(),
        affinity_seconds: None,
        notes: Vec::new(),
        iptables: with_iptables.then(Vec::new),
    };
    if IpFamily::of(&flow.src) != family {
        ex.verdict = Verdict::NotOurs { reason: "source and destination are of different IP families".into() };
        return ex;
    }
    let Some((p, kind)) = ports.iter().find_map(|p| matching_frontend(p, &flow, ctx).map(|k| (p, k))) else {
        // A ClusterIP on a port it does not serve is rejected (kube-proxy's nftables mode).
        if ports.iter().any(|p| p.cluster_ip == flow.dst) {
            ex.verdict = Verdict::Reject {
                reason: format!(
                    "{} is a cluster IP, but no Service port is {} {}",
                    flow.dst, flow.protocol, flow.dport
                ),
            };
            ex.masquerade_reason = "rejected before NAT".into();
        } else {
            ex.verdict = Verdict::NotOurs {
                reason: format!("no Service frontend is {} {}:{}", flow.protocol, flow.dst, flow.dport),
            };
        }
        return ex;
    };
    ex.service_port = Some(p.name.to_string());
    ex.frontend = Some(format!("{kind} {}", join_host_port(&flow.dst, flow.dport)));
    ex.affinity_seconds = p.affinity_timeout;
    if let Some(mode) = p.topology_mode {
        ex.notes.push(format!("topology: endpoints filtered with {mode}"));
    }
    let local_detect = ctx.is_local_traffic(&flow.src, flow.iifname.as_deref());
    let from_pod = local_detect == Some(true);
    let from_node =
        ctx.node_ips.contains(&flow.src) || ctx.local_addresses.as_ref().is_some_and(|a| a.contains(&flow.src));

    let internal = kind == FrontendKind::ClusterIP;
    // Which list applies. External traffic under ETP=Local from a pod or from the node itself is
    // short-circuited to the cluster-wide endpoints (kube-proxy's behaviour).
    let (choice, policy_local, short_circuit) = if internal {
        (p.internal.clone(), p.internal_policy_local, false)
    } else {
        let ext = p.external.clone().unwrap_or(EndpointChoice::Reject);
        if p.external_policy_local && (from_pod || from_node) && !p.cluster_endpoints.is_empty() {
            (EndpointChoice::Endpoints(p.cluster_endpoints.clone()), false, true)
        } else {
            (ext, p.external_policy_local, false)
        }
    };
    ex.traffic = Some(match (internal, policy_local) {
        (true, false) => "internal traffic, internalTrafficPolicy=Cluster".into(),
        (true, true) => "internal traffic, internalTrafficPolicy=Local".into(),
        (false, false) if short_circuit => {
            "external traffic from inside the cluster: short-circuited to all endpoints (externalTrafficPolicy=Local)"
                .into()
        }
        (false, false) => "external traffic, externalTrafficPolicy=Cluster".into(),
        (false, true) => "external traffic, externalTrafficPolicy=Local".into(),
    });

    // Source ranges come first: a load-balancer IP with loadBalancerSourceRanges.
    if kind == FrontendKind::LoadBalancerIP
        && !p.load_balancer_source_ranges.is_empty()
        && !in_cidrs(&flow.src, &p.load_balancer_source_ranges)
        // nftables mode checks source ranges whether or not there are endpoints; iptables mode
        // only sends traffic through KUBE-FW- when there are.
        && (p.has_any_endpoints || !with_iptables)
        && !allowed_from_node(p, ctx, &flow.src)
    {
        ex.verdict = Verdict::Drop {
            reason: format!(
                "source {} is outside loadBalancerSourceRanges {}",
                flow.src,
                p.load_balancer_source_ranges.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
            ),
        };
        ex.masquerade_reason = "dropped before NAT".into();
        if let Some(steps) = ex.iptables.as_mut() {
            steps.push(IptablesStep {
                table: "filter",
                chain: "KUBE-PROXY-FIREWALL".into(),
                rule: format!("{} traffic not accepted by {}", p.name, nftproxy_iptables::service_chain("KUBE-FW-", p)),
                probability: None,
            });
        }
        return ex;
    }

    match choice {
        EndpointChoice::Endpoints(eps) => {
            let cands = candidates(&eps, &flow);
            let hairpin = cands.iter().any(|c| c.hairpin);
            (ex.masquerade, ex.masquerade_reason) = if ctx.masquerade_all {
                (true, "--masquerade-all".into())
            } else if internal {
                match (ctx.local_traffic(family), local_detect) {
                    (LocalTraffic::Unknown, _) => (
                        false,
                        "no local-traffic detector (no --cluster-cidr / pod CIDR / interface of this family): ClusterIP traffic is not masqueraded".into(),
                    ),
                    (_, None) => (
                        true,
                        "the local-traffic detector matches the input interface: without --iifname the packet counts as not from a pod".into(),
                    ),
                    (lt, Some(false)) => (
                        true,
                        format!("source {} is not pod traffic ({}): off-cluster traffic to a cluster IP", flow.src, describe_local(&lt)),
                    ),
                    (lt, Some(true)) => (false, format!("source {} is a pod ({})", flow.src, describe_local(&lt))),
                }
            } else if short_circuit {
                if from_node {
                    (true, "traffic from the node itself to an externalTrafficPolicy=Local Service".into())
                } else {
                    (false, "pod traffic keeps its source address".into())
                }
            } else if policy_local {
                (false, "externalTrafficPolicy=Local keeps the client's address".into())
            } else {
                (true, "externalTrafficPolicy=Cluster: external traffic is masqueraded".into())
            };
            if hairpin && !ex.masquerade {
                ex.notes.push("if the client itself is picked, it is masqueraded (hairpin)".into());
            }
            if let Some(steps) = ex.iptables.as_mut() {
                iptables_path(steps, p, kind, internal, policy_local, &eps, short_circuit);
            }
            ex.verdict = Verdict::Dnat { candidates: cands };
        }
        EndpointChoice::Reject => {
            ex.verdict = Verdict::Reject { reason: format!("{} has no endpoints", p.name) };
            ex.masquerade_reason = "rejected before NAT".into();
            if let Some(steps) = ex.iptables.as_mut() {
                let chain = if internal { "KUBE-SERVICES" } else { "KUBE-EXTERNAL-SERVICES" };
                steps.push(IptablesStep {
                    table: "filter",
                    chain: chain.into(),
                    rule: format!("{} has no endpoints → REJECT", p.name),
                    probability: None,
                });
            }
        }
        EndpointChoice::Drop => {
            ex.verdict = Verdict::Drop { reason: format!("{} has no local endpoints (traffic policy Local)", p.name) };
            ex.masquerade_reason = "dropped before NAT".into();
            if let Some(steps) = ex.iptables.as_mut() {
                let chain = if internal { "KUBE-SERVICES" } else { "KUBE-EXTERNAL-SERVICES" };
                steps.push(IptablesStep {
                    table: "filter",
                    chain: chain.into(),
                    rule: format!("{} has no local endpoints → DROP", p.name),
                    probability: None,
                });
            }
        }
    }
    ex
}

/// kube-proxy's nat chains from KUBE-SERVICES to the KUBE-SEP- of the endpoints.
fn iptables_path(
    steps: &mut Vec<IptablesStep>,
    p: &ResolvedServicePort,
    kind: FrontendKind,
    internal: bool,
    policy_local: bool,
    eps: &[ResolvedEndpoint],
    short_circuit: bool,
) {
    let nat = |chain: &str, rule: String| IptablesStep { table: "nat", chain: chain.into(), rule, probability: None };
    let svc = nftproxy_iptables::service_chain("KUBE-SVC-", p);
    let svl = nftproxy_iptables::service_chain("KUBE-SVL-", p);
    let ext = nftproxy_iptables::service_chain("KUBE-EXT-", p);
    let fw = nftproxy_iptables::service_chain("KUBE-FW-", p);
    let pick_chain = if policy_local { svl.clone() } else { svc.clone() };
    match kind {
        FrontendKind::ClusterIP => steps.push(nat("KUBE-SERVICES", format!("{} cluster IP → {pick_chain}", p.name))),
        FrontendKind::NodePort => {
            steps.push(nat("KUBE-SERVICES", "destination is a local address → KUBE-NODEPORTS".into()));
            steps.push(nat("KUBE-NODEPORTS", format!("{} --dport {} → {ext}", p.name, p.node_port.unwrap_or(0))));
        }
        FrontendKind::ExternalIP => steps.push(nat("KUBE-SERVICES", format!("{} external IP → {ext}", p.name))),
        FrontendKind::LoadBalancerIP => {
            let to = if p.load_balancer_source_ranges.is_empty() { ext.clone() } else { fw.clone() };
            steps.push(nat("KUBE-SERVICES", format!("{} loadbalancer IP → {to}", p.name)));
            if !p.load_balancer_source_ranges.is_empty() {
                steps.push(nat(&fw, format!("source in loadBalancerSourceRanges → {ext}")));
            }
        }
    }
    if !internal {
        let (target, why) = if short_circuit {
            (svc.clone(), "pod or node source: short-circuit to the cluster-wide chain")
        } else if policy_local {
            (svl.clone(), "externalTrafficPolicy=Local")
        } else {
            (svc.clone(), "masquerade (KUBE-MARK-MASQ), then")
        };
        steps.push(nat(&ext, format!("{why} → {target}")));
    }
    let chain = if internal {
        pick_chain
    } else if short_circuit || !policy_local {
        svc
    } else {
        svl
    };
    let n = eps.len();
    for (i, e) in eps.iter().enumerate() {
        let sep = nftproxy_iptables::endpoint_chain(p, e);
        let left = n - i;
        steps.push(IptablesStep {
            table: "nat",
            chain: chain.clone(),
            rule: format!("{} → {sep}", join_host_port(&e.ip, e.port)),
            probability: (left > 1).then(|| nftproxy_iptables::probability(left)),
        });
    }
    if let Some(e) = eps.first() {
        steps.push(nat(
            &nftproxy_iptables::endpoint_chain(p, e),
            format!("DNAT --to-destination {} (one KUBE-SEP- per endpoint)", join_host_port(&e.ip, e.port)),
        ));
    }
}

/// The explanation for a person: one line per fact.
pub fn render_text(ex: &Explanation) -> String {
    let mut s = String::new();
    let f = &ex.flow;
    let _ = writeln!(s, "packet:    {} {} → {}", f.protocol, f.src, join_host_port(&f.dst, f.dport));
    if let (Some(sp), Some(fe)) = (&ex.service_port, &ex.frontend) {
        let _ = writeln!(s, "service:   {sp} (via its {fe})");
    }
    if let Some(t) = &ex.traffic {
        let _ = writeln!(s, "policy:    {t}");
    }
    match &ex.verdict {
        Verdict::Dnat { candidates } => {
            let _ = writeln!(
                s,
                "verdict:   DNAT to one of {} endpoint(s), picked at random per new connection:",
                candidates.len()
            );
            for c in candidates {
                let mut tags = Vec::new();
                if let Some(n) = &c.node {
                    tags.push(format!("node {n}{}", if c.local { ", local" } else { "" }));
                }
                if c.terminating {
                    tags.push("terminating".into());
                }
                if c.hairpin {
                    tags.push("the client itself: hairpin, masqueraded".into());
                }
                let tags = if tags.is_empty() { String::new() } else { format!("  ({})", tags.join("; ")) };
                let _ = writeln!(s, "             {:<24} p={:.3}{tags}", c.endpoint, c.probability);
            }
        }
        Verdict::Reject { reason } => {
            let _ = writeln!(s, "verdict:   REJECT: {reason}");
        }
        Verdict::Drop { reason } => {
            let _ = writeln!(s, "verdict:   DROP: {reason}");
        }
        Verdict::NotOurs { reason } => {
            let _ = writeln!(s, "verdict:   not touched by the proxy: {reason}");
        }
    }
    let _ = writeln!(s, "source:    {} — {}", if ex.masquerade { "masqueraded" } else { "kept" }, ex.masquerade_reason);
    if let Some(a) = ex.affinity_seconds {
        let _ = writeln!(s, "affinity:  ClientIP for {a} s: later connections from {} go to the same endpoint", f.src);
    }
    for n in &ex.notes {
        let _ = writeln!(s, "note:      {n}");
    }
    if let Some(steps) = ex.iptables.as_ref().filter(|s| !s.is_empty()) {
        let _ = writeln!(s, "iptables (kube-proxy's chains):");
        for st in steps {
            let prob = st.probability.as_ref().map(|p| format!("  [--probability {p}]")).unwrap_or_default();
            let _ = writeln!(s, "  {}:{:<24} {}{prob}", st.table, st.chain, st.rule);
        }
    }
    s
}

#[cfg(test)]
mod tests;
