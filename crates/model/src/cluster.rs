//! The cluster as the proxy knows it: every Service, EndpointSlice and Node, keyed so that
//! incremental updates (a watcher event, a changed manifest) replace exactly one object.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::*;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub services: BTreeMap<ServiceName, Service>,
    /// Keyed by (namespace, slice name). Private: [`ClusterState::upsert_slice`] keeps the index
    /// below in step.
    slices: BTreeMap<(Name, Name), EndpointSlice>,
    /// The slices of each Service: resolving a service must not scan its whole namespace (10,000
    /// services in one namespace made that O(n²)). Keys into `slices`, sorted, held whole so that
    /// a lookup (every resolve) allocates nothing. A list, not a set: a Service has one slice or
    /// a few, and a BTreeSet allocates a whole node (~560 bytes) for its first one.
    slices_by_service: BTreeMap<ServiceName, Vec<(Name, Name)>>,
    pub nodes: BTreeMap<String, Node>,
    /// `networking.k8s.io/v1` ServiceCIDR objects: name → `spec.cidrs`.
    pub service_cidr_objects: BTreeMap<String, Vec<ipnet::IpNet>>,
}

/// One endpoint address and port for one service port, merged over all slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEndpoint {
    pub endpoint: Endpoint,
    pub port: u16,
}

impl ClusterState {
    pub fn upsert_service(&mut self, svc: Service) {
        self.services.insert(svc.name.clone(), svc);
    }
    pub fn remove_service(&mut self, name: &ServiceName) -> Option<Service> {
        self.services.remove(name)
    }
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = (slice.namespace.clone(), slice.name.clone());
        let keys = self.slices_by_service.entry(slice.service.clone()).or_default();
        if let Err(at) = keys.binary_search(&key) {
            keys.insert(at, key.clone());
        }
        let service = slice.service.clone();
        if let Some(old) = self.slices.insert(key.clone(), slice) {
            // A slice relabelled to another Service leaves its old one.
            if old.service != service {
                self.unindex(&old.service, &key);
            }
        }
    }
    /// Rebuilds the maps from their own sorted contents, which fills their B-tree nodes (objects
    /// inserted one by one leave them half to two-thirds full). For after a complete list: at
    /// 50k Services × 10 endpoints the state went from 137 to 115 MiB (`mem_breakdown`).
    pub fn compact(&mut self) {
        self.compact_services();
        self.compact_slices();
    }

    /// [`ClusterState::compact`] of the Services alone (after a list of them).
    pub fn compact_services(&mut self) {
        compact_map(&mut self.services);
    }

    /// [`ClusterState::compact`] of the slices and their index alone (after a list of them).
    pub fn compact_slices(&mut self) {
        compact_map(&mut self.slices);
        compact_map(&mut self.slices_by_service);
    }

    pub fn remove_slice(&mut self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        let key = (Name::from(namespace), Name::from(name));
        let old = self.slices.remove(&key)?;
        self.unindex(&old.service, &key);
        Some(old)
    }
    fn unindex(&mut self, svc: &ServiceName, key: &(Name, Name)) {
        if let Some(keys) = self.slices_by_service.get_mut(svc) {
            if let Ok(at) = keys.binary_search(key) {
                keys.remove(at);
            }
            if keys.is_empty() {
                self.slices_by_service.remove(svc);
            }
        }
    }
    /// Every slice, by value (the state is consumed).
    pub fn into_slices(self) -> impl Iterator<Item = EndpointSlice> {
        self.slices.into_values()
    }
    /// Every slice, keyed by (namespace, name).
    pub fn slices(&self) -> &BTreeMap<(Name, Name), EndpointSlice> {
        &self.slices
    }
    /// Every CIDR of every ServiceCIDR object, deduplicated and ordered.
    pub fn service_cidrs(&self) -> Vec<ipnet::IpNet> {
        let set: BTreeSet<ipnet::IpNet> = self.service_cidr_objects.values().flatten().copied().collect();
        set.into_iter().collect()
    }
    pub fn upsert_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// The slices that belong to a Service (through the `kubernetes.io/service-name` label).
    pub fn slices_of<'a>(&'a self, svc: &'a ServiceName) -> impl Iterator<Item = &'a EndpointSlice> {
        self.slices_by_service.get(svc).into_iter().flatten().filter_map(|k| self.slices.get(k))
    }

    /// kube-proxy's EndpointSliceCache merge for one service port and family: every slice of the
    /// Service with that address family contributes the endpoints of the port with the same name
    /// and protocol. The same `ip:port` in two slices counts once; a ready copy wins over a
    /// not-ready one. Ordered like kube-proxy: by the `ip:port` string.
    pub fn endpoints_for(&self, port: &ServicePortName, family: IpFamily) -> Vec<MergedEndpoint> {
        let mut all: Vec<(HostPortKey, bool, &Endpoint, u16)> = Vec::new();
        for slice in self.slices_of(&port.service) {
            if slice.address_type.family() != Some(family) {
                continue;
            }
            let Some(ep_port) = slice.ports.iter().find(|p| p.name == port.port && p.protocol == port.protocol) else {
                continue;
            };
            all.extend(
                slice
                    .endpoints
                    .iter()
                    .map(|ep| (HostPortKey::new(&ep.address, ep_port.port), !ep.ready, ep, ep_port.port)),
            );
        }
        // kube-proxy's order: by the `ip:port` string (its byEndpoint), so that every backend
        // lists endpoints as kube-proxy does. Stable, and ready first within one `ip:port`: the
        // copy kept of a duplicate is the first ready one, else the first one.
        all.sort_by_key(|(key, not_ready, _, _)| (*key, *not_ready));
        all.dedup_by_key(|(key, _, _, _)| *key);
        all.into_iter().map(|(_, _, endpoint, port)| MergedEndpoint { endpoint: endpoint.clone(), port }).collect()
    }
}

/// Rebuilds a map with full B-tree nodes, in place and without a second copy of its contents:
/// `append` of its last entry bulk-builds the tree from a merge of both maps' sorted iterators,
/// and the old nodes are freed as that iteration passes them (`collect` would first gather
/// every entry in a vector: at 500k elements of 92 bytes, a 46 MB transient that raised the
/// daemon's peak).
pub fn compact_map<K: Ord, V>(m: &mut BTreeMap<K, V>) {
    if let Some((k, v)) = m.pop_last() {
        let mut last = BTreeMap::new();
        last.insert(k, v);
        m.append(&mut last);
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    #[test]
    fn a_compacted_map_holds_the_same_in_the_same_order() {
        let mut m: BTreeMap<u32, String> = (0..1000).rev().map(|i| (i * 7 % 1000, i.to_string())).collect();
        let before: Vec<(u32, String)> = m.clone().into_iter().collect();
        compact_map(&mut m);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), before);
        let mut empty: BTreeMap<u32, u32> = BTreeMap::new();
        compact_map(&mut empty);
        assert!(empty.is_empty());
    }
}
