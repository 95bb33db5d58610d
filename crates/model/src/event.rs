//! The events a source of cluster state produces (the Kubernetes API's watchers, the manifest
//! poller) and the daemon's change tracker consumes. They live here, with the model, so that the
//! tracker and the manifest source need neither kube-rs nor an async runtime.

use ipnet::IpNet;

use crate::{EndpointSlice, Node, Service, ServiceName};

/// What a source (the Kubernetes API, or manifests) told us, already in the model's terms: the
/// change tracker's only input.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// Every Service, after a (re)list. Replaces what came before.
    ServicesListed(Vec<Service>),
    ServiceApplied(Service),
    /// Deleted, or changed into something the proxy does not program (ExternalName, another
    /// proxy's label, headless, unusable).
    ServiceDeleted(ServiceName),
    SlicesListed(Vec<EndpointSlice>),
    SliceApplied(EndpointSlice),
    SliceDeleted {
        namespace: String,
        name: String,
    },
    /// This node's Node object (None: it does not exist).
    Node {
        node: Option<Node>,
        eligible: bool,
    },
    /// Every `networking.k8s.io/v1` ServiceCIDR (name, `spec.cidrs`), after a (re)list.
    ServiceCidrsListed(Vec<(String, Vec<IpNet>)>),
    ServiceCidrApplied((String, Vec<IpNet>)),
    ServiceCidrDeleted(String),
    /// This node's interface addresses may have changed (rtnetlink told us): look again.
    LocalAddressesChanged,
    /// The source as a whole could not be read (a manifest that does not parse, an empty one):
    /// nothing changed, the previous state stays.
    SourceFailed(String),
    /// One object was unusable; it was treated as absent.
    Warning(String),
    /// A watch failed (the watcher retries on its own, with backoff).
    WatchError {
        kind: &'static str,
        error: String,
    },
}

