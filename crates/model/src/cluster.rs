//! The cluster as the proxy knows it: every Service, EndpointSlice and Node, keyed so that
//! incremental updates (a watcher event, a changed manifest) replace exactly one object.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::types::*;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub services: BTreeMap<ServiceName, Service>,
    /// Keyed by (namespace, slice name).
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
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
        self.slices
            .insert((slice.namespace.clone(), slice.name.clone()), slice);
    }
    pub fn remove_slice(&mut self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        self.slices
            .remove(&(namespace.to_string(), name.to_string()))
    }
    pub fn upsert_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// The slices that belong to a Service (through the `kubernetes.io/service-name` label).
    pub fn slices_of<'a>(
        &'a self,
        svc: &'a ServiceName,
    ) -> impl Iterator<Item = &'a EndpointSlice> {
        // Slices are keyed by namespace first, so this is a range scan over one namespace.
        self.slices
            .range((svc.namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _)| *ns == svc.namespace)
            .map(|(_, s)| s)
            .filter(move |s| s.service == *svc)
    }

    /// kube-proxy's EndpointSliceCache merge for one service port and family: every slice of the
    /// Service with that address family contributes the endpoints of the port with the same name
    /// and protocol. The same `ip:port` in two slices counts once; a ready copy wins over a
    /// not-ready one. Ordered by address then port, so output is stable.
    pub fn endpoints_for(&self, port: &ServicePortName, family: IpFamily) -> Vec<MergedEndpoint> {
        let mut merged: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
        for slice in self.slices_of(&port.service) {
            if slice.address_type.family() != Some(family) {
                continue;
            }
            let Some(ep_port) = slice
                .ports
                .iter()
                .find(|p| p.name == port.port && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let key = (ep.address, ep_port.port);
                match merged.get(&key) {
                    Some(existing) if existing.ready || !ep.ready => {}
                    _ => {
                        merged.insert(key, ep.clone());
                    }
                }
            }
        }
        merged
            .into_iter()
            .map(|((_, port), endpoint)| MergedEndpoint { endpoint, port })
            .collect()
    }
}
