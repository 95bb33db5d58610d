//! What the gauges and the healthCheckNodePort servers report, kept per Service and summed as
//! Services change, so that a partial sync costs O(changed Services) here too.

use std::collections::{BTreeMap, BTreeSet};

use nftproxy_model::{ClusterState, IpFamily, NodeContext, Service, ServiceName, ServiceType, TrafficPolicy};

use crate::health::ServiceHealthEntry;

/// One family's counts (one Service's, or the sum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyStats {
    pub services: i64,
    pub service_ports: i64,
    /// Endpoints × ports of the Service's slices.
    pub endpoints: i64,
    /// Service ports with internalTrafficPolicy=Local and endpoints, none of them here.
    pub no_local_internal: i64,
    /// The same for externalTrafficPolicy=Local.
    pub no_local_external: i64,
}

impl FamilyStats {
    fn add(&mut self, o: &FamilyStats, sign: i64) {
        self.services += sign * o.services;
        self.service_ports += sign * o.service_ports;
        self.endpoints += sign * o.endpoints;
        self.no_local_internal += sign * o.no_local_internal;
        self.no_local_external += sign * o.no_local_external;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceStats {
    families: [FamilyStats; 2],
    health: Option<ServiceHealthEntry>,
}

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn compute(state: &ClusterState, ctx: &NodeContext, svc: &Service) -> ServiceStats {
    let mut out = ServiceStats::default();
    let local_policy =
        svc.internal_traffic_policy == TrafficPolicy::Local || svc.external_traffic_policy == TrafficPolicy::Local;
    let health_port = svc.health_check_node_port.filter(|_| {
        svc.service_type == ServiceType::LoadBalancer && svc.external_traffic_policy == TrafficPolicy::Local
    });
    let mut local_ready = BTreeSet::new();
    for (i, fam) in FAMILIES.into_iter().enumerate() {
        if !svc.cluster_ips.iter().any(|ip| fam.matches(ip)) {
            continue;
        }
        let f = &mut out.families[i];
        f.services = 1;
        f.service_ports = svc.ports.len() as i64;
        f.endpoints = state
            .slices_of(&svc.name)
            .filter(|s| s.address_type.family() == Some(fam))
            .map(|s| (s.endpoints.len() * s.ports.len().max(1)) as i64)
            .sum();
        if local_policy || health_port.is_some() {
            for p in nftproxy_model::resolve_service(state, ctx, fam, svc) {
                let none_here = p.has_any_endpoints && p.local_endpoints.is_empty();
                f.no_local_internal += i64::from(p.internal_policy_local && none_here);
                f.no_local_external += i64::from(p.external_policy_local && none_here);
                // kube-proxy counts distinct local ready endpoint addresses over all ports.
                local_ready.extend(p.local_endpoints.iter().filter(|e| e.ready).map(|e| e.ip));
            }
        }
    }
    out.health = health_port.map(|port| ServiceHealthEntry { port, local_endpoints: local_ready.len() });
    out
}

#[derive(Debug, Default)]
pub struct Stats {
    by_service: BTreeMap<ServiceName, ServiceStats>,
    totals: [FamilyStats; 2],
    health: BTreeMap<ServiceName, ServiceHealthEntry>,
}

impl Stats {
    /// Recomputes the named Services (changed, added or deleted).
    pub fn update<'a>(
        &mut self,
        state: &ClusterState,
        ctx: &NodeContext,
        services: impl IntoIterator<Item = &'a ServiceName>,
    ) {
        for name in services {
            if let Some(old) = self.by_service.remove(name) {
                for (t, o) in self.totals.iter_mut().zip(&old.families) {
                    t.add(o, -1);
                }
                self.health.remove(name);
            }
            if let Some(svc) = state.services.get(name) {
                let new = compute(state, ctx, svc);
                for (t, n) in self.totals.iter_mut().zip(&new.families) {
                    t.add(n, 1);
                }
                if let Some(h) = &new.health {
                    self.health.insert(name.clone(), h.clone());
                }
                self.by_service.insert(name.clone(), new);
            }
        }
    }

    /// Recomputes every Service (after a full sync or a node change).
    pub fn rebuild(&mut self, state: &ClusterState, ctx: &NodeContext) {
        *self = Stats::default();
        self.update(state, ctx, state.services.keys());
        // Built full from its sorted contents (inserted in order, its B-tree nodes were half
        // full): 13.6 → 7.4 MiB at 50k Services (`mem_breakdown`).
        nftproxy_model::compact_map(&mut self.by_service);
    }

    pub fn totals(&self, family: IpFamily) -> FamilyStats {
        self.totals[if family == IpFamily::V4 { 0 } else { 1 }]
    }

    /// What each healthCheckNodePort server should report.
    pub fn health(&self) -> &BTreeMap<ServiceName, ServiceHealthEntry> {
        &self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_manifest::Loaded;

    fn state(text: &str) -> ClusterState {
        let mut l = Loaded::default();
        l.add_text("t", text);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        l.state
    }

    #[test]
    fn partial_updates_equal_a_rebuild() {
        let ctx = NodeContext { node_name: "node-a".into(), ..Default::default() };
        let before =
            state(include_str!("../../../examples/cluster.yaml").replace("port: 70000", "port: 7000").as_str());
        let mut stats = Stats::default();
        stats.rebuild(&before, &ctx);
        let ingress = ServiceName::new("edge", "ingress");
        assert_eq!(stats.health().get(&ingress), Some(&ServiceHealthEntry { port: 32001, local_endpoints: 1 }));
        assert!(stats.totals(IpFamily::V4).services >= 5);

        // Delete one Service and drop the local endpoint of another.
        let mut after = before.clone();
        let web = ServiceName::new("shop", "web");
        after.remove_service(&web);
        let mut slices: Vec<_> = after.slices_of(&ingress).cloned().collect();
        for s in &mut slices {
            s.endpoints.retain(|e| e.node_name.as_deref() != Some("node-a"));
            after.upsert_slice(s.clone());
        }
        stats.update(&after, &ctx, [&web, &ingress]);
        let mut fresh = Stats::default();
        fresh.rebuild(&after, &ctx);
        assert_eq!(stats.totals(IpFamily::V4), fresh.totals(IpFamily::V4));
        assert_eq!(stats.health(), fresh.health());
        assert_eq!(stats.health()[&ingress].local_endpoints, 0);
        assert_eq!(stats.totals(IpFamily::V4).no_local_external, 1, "ingress: endpoints elsewhere, none here");
    }
}
