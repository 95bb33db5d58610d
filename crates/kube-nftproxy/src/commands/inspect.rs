//! `kube-nftproxy inspect`: what every service port routes to on this node, per kube-proxy's rules.

use std::fmt::Write;

use nftproxy_model::{EndpointChoice, ResolvedEndpoint, ResolvedServicePort};

fn endpoints(eps: &[ResolvedEndpoint]) -> String {
    if eps.is_empty() {
        return "-".into();
    }
    eps.iter()
        .map(|e| if e.terminating { format!("{e} (terminating)") } else { e.to_string() })
        .collect::<Vec<_>>()
        .join(", ")
}

fn notes(p: &ResolvedServicePort) -> String {
    let mut n = Vec::new();
    match &p.internal {
        EndpointChoice::Reject => n.push("internal: reject, no endpoints".to_string()),
        EndpointChoice::Drop => n.push("internal: drop, no local endpoints (ITP=Local)".to_string()),
        EndpointChoice::Endpoints(_) if p.internal_policy_local => n.push("ITP=Local".to_string()),
        EndpointChoice::Endpoints(_) => {}
    }
    match &p.external {
        Some(EndpointChoice::Reject) => n.push("external: reject, no endpoints".into()),
        Some(EndpointChoice::Drop) => n.push("external: drop, no local endpoints (ETP=Local)".into()),
        Some(EndpointChoice::Endpoints(_)) if p.external_policy_local => n.push("ETP=Local".into()),
        _ => {}
    }
    if let Some(mode) = p.topology_mode {
        n.push(format!("topology {mode}"));
    }
    if let Some(t) = p.affinity_timeout {
        n.push(format!("ClientIP affinity {t}s"));
    }
    if !p.load_balancer_source_ranges.is_empty() {
        let r: Vec<String> = p.load_balancer_source_ranges.iter().map(|r| r.to_string()).collect();
        n.push(format!("LB source ranges {}", r.join(",")));
    }
    if let Some(hc) = p.health_check_node_port {
        n.push(format!("health check node port {hc}"));
    }
    n.join("; ")
}

/// The table: one row per service port and family.
pub fn table(ports: &[ResolvedServicePort]) -> String {
    let header = ["SERVICE PORT", "PROTO", "FRONTENDS", "CLUSTER-WIDE ENDPOINTS", "NODE-LOCAL ENDPOINTS", "NOTES"];
    let rows: Vec<[String; 6]> = ports
        .iter()
        .map(|p| {
            let frontends: Vec<String> = p.frontends().iter().map(|f| format!("{} {f}", f.kind)).collect();
            // Node-local endpoints are only computed when a Local policy uses them; show them anyway.
            let local: Vec<ResolvedEndpoint> = if p.internal_policy_local || p.external_policy_local {
                p.local_endpoints.clone()
            } else {
                p.cluster_endpoints.iter().filter(|e| e.is_local).cloned().collect()
            };
            [
                p.name.to_string(),
                format!("{}/{}", p.protocol, p.family),
                frontends.join(", "),
                endpoints(&p.cluster_endpoints),
                endpoints(&local),
                notes(p),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}
