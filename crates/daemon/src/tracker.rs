//! kube-proxy's change trackers, in one: source events go into the cluster state, and the
//! Services they touch are remembered until the next sync takes them. Pure (no I/O, no clock).

use std::collections::{BTreeMap, BTreeSet};

use nftproxy_model::{ClusterState, EndpointSlice, ListedKind, Name, Node, Service, ServiceName, SourceEvent};

/// What the next sync has to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services added, changed or deleted (their own spec or their endpoints).
    pub services: BTreeSet<ServiceName>,
    /// Trigger times (`endpoints.kubernetes.io/last-change-trigger-time`) of the slices that
    /// changed, for the network-programming-latency metric.
    pub trigger_times: Vec<String>,
    /// This node's context changed (its Node's IPs, zone or pod CIDRs, the ServiceCIDRs, its
    /// interface addresses): everything is resolved again.
    pub node: bool,
}

#[derive(Debug, Default)]
pub struct ChangeTracker {
    pub state: ClusterState,
    /// Our Node object, as last seen.
    pub node: Option<Node>,
    /// kube-proxy's NodeEligible (for /healthz).
    pub node_eligible: bool,
    changes: Changes,
    services_synced: bool,
    slices_synced: bool,
    node_synced: bool,
    /// Lists under way: what each has held so far (ServiceCIDRs whole: a handful, applied as
    /// one change at the end, since they are part of the node context).
    listing_services: Option<BTreeSet<ServiceName>>,
    listing_slices: Option<BTreeSet<(Name, Name)>>,
    listing_cidrs: Option<BTreeMap<String, Vec<ipnet::IpNet>>>,
    /// Counters for kube-proxy's `…_changes_total` metrics.
    pub service_changes_total: u64,
    pub endpoint_changes_total: u64,
    pending_service_changes: usize,
    pending_endpoint_changes: usize,
}

impl ChangeTracker {
    /// The first sync waits for complete lists of Services and EndpointSlices (and the Node
    /// lookup), so a restart never programs a half-empty ruleset. Later relists do not hold
    /// syncs back: what a relist has not reached yet is still there in its old version (only
    /// `ListDone` deletes), and a relist cut short by an API outage must not stop drift repair.
    pub fn ready(&self) -> bool {
        self.services_synced && self.slices_synced && self.node_synced
    }

    /// Whether anything waits for a sync.
    pub fn pending(&self) -> bool {
        !self.changes.services.is_empty() || self.changes.node
    }

    pub fn pending_counts(&self) -> (usize, usize) {
        (self.pending_service_changes, self.pending_endpoint_changes)
    }

    /// Applies one event; returns true when it changed something a sync must program.
    pub fn apply(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::ListStarted(kind) => {
                match kind {
                    ListedKind::Services => self.listing_services = Some(BTreeSet::new()),
                    ListedKind::EndpointSlices => self.listing_slices = Some(BTreeSet::new()),
                    ListedKind::ServiceCidrs => self.listing_cidrs = Some(BTreeMap::new()),
                }
                false
            }
            SourceEvent::ListDone(kind) => self.list_done(kind),
            SourceEvent::ServiceApplied(svc) => {
                if let Some(seen) = &mut self.listing_services {
                    seen.insert(svc.name.clone());
                }
                self.service_applied(svc)
            }
            SourceEvent::ServiceDeleted(name) => self.service_deleted(&name),
            SourceEvent::SliceApplied(s) => {
                if let Some(seen) = &mut self.listing_slices {
                    seen.insert((s.namespace.clone(), s.name.clone()));
                }
                self.slice_applied(s)
            }
            SourceEvent::SliceDeleted { namespace, name } => self.slice_deleted(&namespace, &name),
            SourceEvent::Node { node, eligible } => {
                self.node_synced = true;
                self.node_eligible = eligible;
                if self.node != node {
                    if let Some(n) = &node {
                        self.state.upsert_node(n.clone());
                    } else if let Some(old) = &self.node {
                        self.state.nodes.remove(&old.name);
                    }
                    self.node = node;
                    self.changes.node = true;
                    return true;
                }
                false
            }
            SourceEvent::ServiceCidrApplied((name, cidrs)) => match &mut self.listing_cidrs {
                // Part of a list: applied at its end.
                Some(listed) => {
                    listed.insert(name, cidrs);
                    false
                }
                None => {
                    let mut new = self.state.service_cidr_objects.clone();
                    new.insert(name, cidrs);
                    self.service_cidrs_changed(new)
                }
            },
            SourceEvent::ServiceCidrDeleted(name) => {
                let mut new = self.state.service_cidr_objects.clone();
                new.remove(&name);
                self.service_cidrs_changed(new)
            }
            SourceEvent::LocalAddressesChanged
            | SourceEvent::SourceFailed(_)
            | SourceEvent::Warning(_)
            | SourceEvent::WatchError { .. } => false,
        }
    }

    /// The end of a list: what it did not hold is deleted; the first one of a kind completes
    /// the picture the first sync waits for.
    fn list_done(&mut self, kind: ListedKind) -> bool {
        let mut changed = false;
        match kind {
            ListedKind::Services => {
                let seen = self.listing_services.take().unwrap_or_default();
                let gone: Vec<ServiceName> =
                    self.state.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                for name in gone {
                    changed |= self.service_deleted(&name);
                }
                self.services_synced = true;
                // A whole list went in object by object: its map is rebuilt full.
                self.state.compact_services();
            }
            ListedKind::EndpointSlices => {
                let seen = self.listing_slices.take().unwrap_or_default();
                let gone: Vec<(Name, Name)> =
                    self.state.slices().keys().filter(|k| !seen.contains(*k)).cloned().collect();
                for (ns, name) in gone {
                    changed |= self.slice_deleted(&ns, &name);
                }
                self.slices_synced = true;
                self.state.compact_slices();
            }
            ListedKind::ServiceCidrs => {
                let new = self.listing_cidrs.take().unwrap_or_default();
                changed = self.service_cidrs_changed(new);
            }
        }
        changed
    }

    /// ServiceCIDRs are part of the node context (the `cluster-ips-check` drop): a change is a
    /// full resync, as a Node change is.
    fn service_cidrs_changed(&mut self, new: BTreeMap<String, Vec<ipnet::IpNet>>) -> bool {
        let before = self.state.service_cidrs();
        self.state.service_cidr_objects = new;
        if self.state.service_cidrs() == before {
            return false;
        }
        self.changes.node = true;
        true
    }

    /// Something outside the cluster objects changed the node context (interface addresses).
    pub fn context_changed(&mut self) {
        self.changes.node = true;
    }

    fn service_applied(&mut self, svc: Service) -> bool {
        if self.state.services.get(&svc.name) == Some(&svc) {
            return false;
        }
        self.mark_service(svc.name.clone());
        self.state.upsert_service(svc);
        true
    }

    fn service_deleted(&mut self, name: &ServiceName) -> bool {
        if self.state.remove_service(name).is_none() {
            return false;
        }
        self.mark_service(name.clone());
        true
    }

    fn slice_applied(&mut self, s: EndpointSlice) -> bool {
        let key = (s.namespace.clone(), s.name.clone());
        let old = self.state.slices().get(&key);
        if old == Some(&s) {
            return false;
        }
        if let Some(old) = old.filter(|o| o.service != s.service) {
            let svc = old.service.clone();
            self.mark_endpoints(svc, None);
        }
        self.mark_endpoints(s.service.clone(), s.trigger_time.clone());
        self.state.upsert_slice(s);
        true
    }

    fn slice_deleted(&mut self, namespace: &str, name: &str) -> bool {
        match self.state.remove_slice(namespace, name) {
            Some(old) => {
                self.mark_endpoints(old.service, None);
                true
            }
            None => false,
        }
    }

    fn mark_service(&mut self, name: ServiceName) {
        self.service_changes_total += 1;
        if self.changes.services.insert(name) {
            self.pending_service_changes += 1;
        }
    }

    fn mark_endpoints(&mut self, name: ServiceName, trigger: Option<String>) {
        self.endpoint_changes_total += 1;
        self.pending_endpoint_changes += 1;
        self.changes.services.insert(name);
        self.changes.trigger_times.extend(trigger);
    }

    /// Hands the pending changes to a sync.
    pub fn take(&mut self) -> Changes {
        self.pending_service_changes = 0;
        self.pending_endpoint_changes = 0;
        std::mem::take(&mut self.changes)
    }

    /// A failed sync gives its changes back (the retry is a full sync anyway, but the metrics
    /// and the latency stamps must not be lost).
    pub fn give_back(&mut self, c: Changes) {
        self.changes.services.extend(c.services);
        self.changes.trigger_times.extend(c.trigger_times);
        self.changes.node |= c.node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftproxy_manifest::Loaded;

    fn objects(yaml: &str) -> ClusterState {
        let mut l = Loaded::default();
        l.add_text("t", yaml);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        l.state
    }

    const TWO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: ns}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-1
  namespace: ns
  labels: {kubernetes.io/service-name: a}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-11-26T12:00:00Z"}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2]}]
ports: [{port: 8080}]
"#;

    /// Every list of a state as a source sends it: [Services, slices, the Node].
    fn listed(state: &ClusterState) -> [Vec<SourceEvent>; 3] {
        [
            SourceEvent::list(ListedKind::Services, state.services.values().cloned().map(SourceEvent::ServiceApplied)),
            SourceEvent::list(
                ListedKind::EndpointSlices,
                state.slices().values().cloned().map(SourceEvent::SliceApplied),
            ),
            vec![SourceEvent::Node { node: None, eligible: false }],
        ]
    }

    #[test]
    fn first_sync_waits_for_every_list() {
        let state = objects(TWO);
        let mut t = ChangeTracker::default();
        let [svcs, slices, node] = listed(&state);
        svcs.into_iter().for_each(|e| _ = t.apply(e));
        assert!(!t.ready(), "services alone are not a complete picture");
        node.into_iter().for_each(|e| _ = t.apply(e));
        assert!(!t.ready());
        let mut slices = slices.into_iter();
        t.apply(slices.next().unwrap());
        assert!(!t.ready(), "the first list of slices is not complete yet");
        slices.for_each(|e| _ = t.apply(e));
        assert!(t.ready());
        let c = t.take();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.trigger_times, vec!["2026-11-26T12:00:00Z".to_string()]);
        assert_eq!(t.state, state);
    }

    #[test]
    fn a_relist_changes_only_what_differs() {
        let state = objects(TWO);
        let mut t = ChangeTracker::default();
        for e in listed(&state).into_iter().flatten() {
            t.apply(e);
        }
        t.take();
        // The same lists again (a relist after 410 Gone): nothing to do.
        for e in listed(&state).into_iter().flatten() {
            t.apply(e);
        }
        assert!(!t.pending());
        // A relist under way holds nothing back: every object is there until the list ends.
        t.apply(SourceEvent::ListStarted(ListedKind::Services));
        assert!(t.ready(), "a relist does not stop syncs");
        assert_eq!(t.state, state);
        // A relist that misses service b and slice a-1 (deleted while disconnected).
        let mut smaller = state.clone();
        smaller.remove_service(&ServiceName::new("ns", "b"));
        smaller.remove_slice("ns", "a-1");
        for e in listed(&smaller).into_iter().flatten() {
            t.apply(e);
        }
        let c = t.take();
        assert_eq!(c.services, [ServiceName::new("ns", "a"), ServiceName::new("ns", "b")].into_iter().collect());
        assert_eq!(t.state, smaller);
    }

    #[test]
    fn unchanged_updates_are_not_changes() {
        let state = objects(TWO);
        let mut t = ChangeTracker::default();
        for e in listed(&state).into_iter().flatten() {
            t.apply(e);
        }
        t.take();
        let a = state.services.values().next().unwrap().clone();
        assert!(!t.apply(SourceEvent::ServiceApplied(a.clone())));
        let mut a2 = a.clone();
        a2.ports[0].port = 81;
        assert!(t.apply(SourceEvent::ServiceApplied(a2)));
        assert!(t.apply(SourceEvent::ServiceDeleted(a.name.clone())));
        assert!(!t.apply(SourceEvent::ServiceDeleted(a.name.clone())));
        assert_eq!(t.pending_counts(), (1, 0));
        assert_eq!(t.take().services.len(), 1);
    }

    #[test]
    fn service_cidr_changes_resync_everything_once() {
        let state = objects(TWO);
        let mut t = ChangeTracker::default();
        for e in listed(&state).into_iter().flatten() {
            t.apply(e);
        }
        t.take();
        let cidr = |s: &str| vec![s.parse::<ipnet::IpNet>().unwrap()];
        let list = SourceEvent::list(
            ListedKind::ServiceCidrs,
            [SourceEvent::ServiceCidrApplied(("kubernetes".into(), cidr("10.96.0.0/16")))],
        );
        assert_eq!(
            list.into_iter().map(|e| t.apply(e)).collect::<Vec<_>>(),
            [false, false, true],
            "one change, at the end"
        );
        assert!(t.take().node);
        // A second object with the same CIDR changes nothing the rules use.
        assert!(!t.apply(SourceEvent::ServiceCidrApplied(("copy".into(), cidr("10.96.0.0/16")))));
        assert!(t.apply(SourceEvent::ServiceCidrApplied(("extra".into(), cidr("10.97.0.0/16")))));
        assert_eq!(t.state.service_cidrs().len(), 2);
        assert!(t.apply(SourceEvent::ServiceCidrDeleted("extra".into())));
        assert!(!t.apply(SourceEvent::ServiceCidrDeleted("copy".into())));
        assert_eq!(t.state.service_cidrs(), cidr("10.96.0.0/16"));
    }

    #[test]
    fn a_failed_sync_keeps_its_changes() {
        let state = objects(TWO);
        let mut t = ChangeTracker::default();
        for e in listed(&state).into_iter().flatten() {
            t.apply(e);
        }
        let c = t.take();
        assert!(!t.pending());
        t.give_back(c.clone());
        assert_eq!(t.take(), c);
    }
}
