//! The events a source of cluster state produces (the Kubernetes API's watchers, the manifest
//! poller) and the daemon's change tracker consumes. They live here, with the model, so that the
//! tracker and the manifest source need neither kube-rs nor an async runtime.

use ipnet::IpNet;

use crate::{EndpointSlice, Node, Service, ServiceName};

/// The kinds of objects a source lists whole (at start, and again after a watch lost track).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListedKind {
    Services,
    EndpointSlices,
    ServiceCidrs,
}

/// What a source (the Kubernetes API, or manifests) told us, already in the model's terms: the
/// change tracker's only input.
///
/// A (re)list streams: `ListStarted(kind)`, each object of the list as an `…Applied` event (an
/// unusable one as a `Warning`), then `ListDone(kind)`, after which what the list did not hold is
/// gone. No source keeps a list of all objects to send at once (a copy of the cluster beside
/// the tracker's own was the memory peak of every relist and manifest reload). Deletions wait
/// for `ListDone`, so a sync during a relist sees every object, in its old or its new version
/// (as it would from watch events), never a half-empty cluster; the first sync waits for the
/// first complete lists.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// A list of `kind` begins: its objects follow.
    ListStarted(ListedKind),
    /// The list of `kind` is complete: objects of that kind it did not hold are deleted.
    ListDone(ListedKind),
    ServiceApplied(Service),
    /// Deleted, or changed into something the proxy does not program (ExternalName, another
    /// proxy's label, headless, unusable).
    ServiceDeleted(ServiceName),
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

impl SourceEvent {
    /// A whole list of `kind` as events: `ListStarted`, the objects, `ListDone`.
    pub fn list(kind: ListedKind, objects: impl IntoIterator<Item = SourceEvent>) -> Vec<SourceEvent> {
        let mut v = vec![SourceEvent::ListStarted(kind)];
        v.extend(objects);
        v.push(SourceEvent::ListDone(kind));
        v
    }
}
