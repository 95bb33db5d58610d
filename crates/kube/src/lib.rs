//! The Kubernetes API as an input: three kube-rs watchers (Services, EndpointSlices, this node's
//! Node) whose objects are converted to the service model as they arrive and sent on as
//! [`SourceEvent`]s. Nothing of the API objects is kept here: only the model's small types leave
//! this crate, so managedFields, annotations and status never stay in memory.
//!
//! A (re)list streams as it arrives: kube-rs's `Init` is `ListStarted`, each `InitApply` the
//! object's `…Applied` event, `InitDone` is `ListDone` (what the list lacked is gone). Nothing
//! is buffered here (a buffer of the whole list was a second copy of the cluster at every
//! relist); the tracker deletes only at the list's end and holds the first sync until the first
//! lists are complete, so neither the first sync nor a relist after `410 Gone` ever sees a
//! half-empty cluster.

use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use nftproxy_manifest::convert;
use nftproxy_model::{EndpointSlice, ListedKind, Service, ServiceName};
use tokio::sync::mpsc;

/// kube-proxy's selector for both Services and EndpointSlices: objects of another service proxy
/// and headless Services' slices are never ours.
pub const PROXY_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The taint the cluster autoscaler puts on a node it is about to delete (kube-proxy's /healthz
/// then answers 503 so load balancers drain it).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The events this source produces are the model's ([`SourceEvent`]), shared with the manifest
/// source: the change tracker depends on neither.
pub use nftproxy_model::SourceEvent;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("in-cluster configuration (no --kubeconfig given): {0}")]
    InCluster(kube::config::InClusterError),
    #[error("--master {url}: {error}")]
    Master { url: String, error: String },
    #[error("API client: {0}")]
    Client(#[from] kube::Error),
}

/// kube-proxy's client rules: `--kubeconfig` if given (its current context), else the in-cluster
/// service account; `--master` overrides the server address of either.
pub async fn client(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|source| ClientError::Kubeconfig { path: path.display().to_string(), source })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig { path: path.display().to_string(), source })?
        }
        None if master.is_some() => Config::new(master.unwrap().parse().map_err(|e: http::uri::InvalidUri| {
            ClientError::Master { url: master.unwrap().into(), error: e.to_string() }
        })?),
        None => Config::incluster().map_err(ClientError::InCluster)?,
    };
    if let Some(url) = master {
        config.cluster_url = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Master { url: url.into(), error: e.to_string() })?;
    }
    // Watches are long polls; the default read timeout would cut them.
    config.read_timeout = None;
    Ok(Client::try_from(config)?)
}

/// Reconnect delays: 100 ms doubling to 1 s. client-go's reflector backs off to 30 s; a proxy must
/// see changes soon after the API server is back, and one list per second per watcher while it is
/// down is cheap.
#[derive(Clone, Debug)]
pub struct ReconnectBackoff {
    next: Duration,
    pub max: Duration,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        ReconnectBackoff { next: Duration::from_millis(100), max: Duration::from_secs(1) }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

impl Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Runs the four watchers until `tx` is closed. `node_name` selects this node's Node.
pub async fn watch(client: Client, node_name: String, tx: mpsc::Sender<SourceEvent>) {
    let selector = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let services = watch_kind(Api::<core::Service>::all(client.clone()), selector.clone(), tx.clone(), SERVICES);
    let slices = watch_kind(Api::<discovery::EndpointSlice>::all(client.clone()), selector, tx.clone(), SLICES);
    // kube-proxy watches ServiceCIDRs (MultiCIDRServiceAllocator, GA in 1.33) to drop traffic to
    // unallocated ClusterIPs. The first sync does not wait for them, as kube-proxy's does not.
    let cidrs = watch_service_cidrs(client.clone(), tx.clone());
    let nodes = watch_node(Api::<core::Node>::all(client), node_name, tx);
    tokio::join!(services, slices, cidrs, nodes);
}

/// The ServiceCIDR watcher, unless the API server has no such resource (before Kubernetes 1.33):
/// then one warning, and no drops of unallocated ClusterIPs, instead of a failed watch a second.
async fn watch_service_cidrs(client: Client, tx: mpsc::Sender<SourceEvent>) {
    let api = Api::<networking::ServiceCIDR>::all(client);
    if let Err(kube::Error::Api(e)) = api.list(&kube::api::ListParams::default().limit(1)).await
        && e.code == 404
    {
        let _ = tx
            .send(SourceEvent::Warning(
                "this API server has no networking.k8s.io/v1 ServiceCIDRs: traffic to unallocated ClusterIPs is not dropped"
                    .into(),
            ))
            .await;
        return;
    }
    watch_kind(api, Default::default(), tx, SERVICE_CIDRS).await
}

/// One converted object: `Ok(Some)` usable, `Ok(None)` deliberately not ours, `Err` unusable.
type Converted<T> = Result<Option<T>, String>;

/// How objects of one kind become model events.
struct KindEvents<K, T> {
    kind: &'static str,
    convert: fn(&K) -> Converted<T>,
    applied: fn(T) -> SourceEvent,
    listed: ListedKind,
    /// From the object's metadata alone: a deleted or unusable object needs only its name.
    deleted: fn(&K) -> SourceEvent,
}

fn ns_name(meta: &kube::api::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

const SERVICES: KindEvents<core::Service, Service> = KindEvents {
    kind: "Service",
    convert: |svc| match convert::service(svc) {
        Ok(Ok(s)) => Ok(Some(s)),
        // ExternalName, headless, another proxy's: not ours (also when a Service becomes one).
        Ok(Err(_skipped)) => Ok(None),
        Err(e) => Err(e.to_string()),
    },
    applied: SourceEvent::ServiceApplied,
    listed: ListedKind::Services,
    deleted: |svc| {
        let (ns, name) = ns_name(&svc.metadata);
        SourceEvent::ServiceDeleted(ServiceName::new(ns, name))
    },
};

const SLICES: KindEvents<discovery::EndpointSlice, EndpointSlice> = KindEvents {
    kind: "EndpointSlice",
    convert: |es| convert::endpoint_slice(es).map(Some).map_err(|e| e.to_string()),
    applied: SourceEvent::SliceApplied,
    listed: ListedKind::EndpointSlices,
    deleted: |es| {
        let (namespace, name) = ns_name(&es.metadata);
        SourceEvent::SliceDeleted { namespace, name }
    },
};

const SERVICE_CIDRS: KindEvents<networking::ServiceCIDR, (String, Vec<IpNet>)> = KindEvents {
    kind: "ServiceCIDR",
    convert: |sc| convert::service_cidr(sc).map(Some).map_err(|e| e.to_string()),
    applied: SourceEvent::ServiceCidrApplied,
    listed: ListedKind::ServiceCidrs,
    deleted: |sc| SourceEvent::ServiceCidrDeleted(sc.metadata.name.clone().unwrap_or_default()),
};

async fn watch_kind<K, T>(api: Api<K>, config: watcher::Config, tx: mpsc::Sender<SourceEvent>, k: KindEvents<K, T>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let stream = watcher(api, config).backoff(ReconnectBackoff::default());
    forward(stream, &tx, k.kind, |ev| match ev {
        watcher::Event::Init => vec![SourceEvent::ListStarted(k.listed)],
        // Not ours, or unusable: simply not in the list (ListDone removes it if it was there).
        watcher::Event::InitApply(obj) => match (k.convert)(&obj) {
            Ok(v) => v.map(k.applied).into_iter().collect(),
            Err(w) => vec![SourceEvent::Warning(w)],
        },
        watcher::Event::InitDone => vec![SourceEvent::ListDone(k.listed)],
        watcher::Event::Apply(obj) => match (k.convert)(&obj) {
            Ok(Some(v)) => vec![(k.applied)(v)],
            Ok(None) => vec![(k.deleted)(&obj)],
            Err(w) => vec![SourceEvent::Warning(w), (k.deleted)(&obj)],
        },
        watcher::Event::Delete(obj) => vec![(k.deleted)(&obj)],
    })
    .await
}

async fn forward<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: &mpsc::Sender<SourceEvent>,
    kind: &'static str,
    mut handle: impl FnMut(watcher::Event<K>) -> Vec<SourceEvent>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let events = match item {
            Ok(ev) => handle(ev),
            Err(e) => vec![SourceEvent::WatchError { kind, error: e.to_string() }],
        };
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

async fn watch_node(api: Api<core::Node>, node_name: String, tx: mpsc::Sender<SourceEvent>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let stream = watcher(api, config).backoff(ReconnectBackoff::default());
    let mut seen: Option<core::Node> = None;
    // Whether a Node was ever seen: a Node that never existed says nothing about eligibility
    // (kube-proxy starts eligible); one that went away changes nothing (see `Delete` below).
    let mut existed = false;
    forward(stream, &tx, "Node", |ev| match ev {
        watcher::Event::Init => {
            seen = None;
            vec![]
        }
        watcher::Event::InitApply(n) => {
            seen = Some(n);
            vec![]
        }
        watcher::Event::InitDone => {
            let n = seen.take();
            if n.is_none() && existed {
                // Gone while we were disconnected: a deletion, kept as kube-proxy keeps it.
                return vec![node_deleted(&node_name)];
            }
            existed |= n.is_some();
            vec![node_event(n.as_ref(), existed)]
        }
        watcher::Event::Apply(n) => {
            existed = true;
            vec![node_event(Some(&n), true)]
        }
        // kube-proxy v1.34 (`NodeManager.OnNodeDelete`) only logs a deletion of its Node: the
        // node IPs, zone and health eligibility of the last object it saw stay in force (it
        // serves NodePorts until it is stopped, as the node's pods drain).
        watcher::Event::Delete(_) => vec![node_deleted(&node_name)],
    })
    .await
}

/// This node's Node was deleted: said, and nothing else changes.
fn node_deleted(name: &str) -> SourceEvent {
    SourceEvent::Warning(format!(
        "Node {name} is being deleted; its last addresses, zone and health stay in force, as in kube-proxy"
    ))
}

/// kube-proxy's NodeEligible: the Node exists, is not being deleted and is not tainted for
/// deletion by the autoscaler. Before any Node was seen the node counts as eligible.
fn node_event(node: Option<&core::Node>, existed: bool) -> SourceEvent {
    let Some(n) = node else {
        return SourceEvent::Node { node: None, eligible: !existed };
    };
    let eligible = n.metadata.deletion_timestamp.is_none()
        && !n.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten().any(|t| t.key == TO_BE_DELETED_TAINT);
    match convert::node(n) {
        Ok(node) => SourceEvent::Node { node: Some(node), eligible },
        Err(e) => SourceEvent::Warning(e.to_string()),
    }
}

/// One complete list of Services, EndpointSlices and Nodes (no watch): the cluster as it is now,
/// for one-shot commands such as `explain --kubeconfig`. Unusable objects are skipped with a
/// warning each.
pub async fn snapshot(client: Client) -> Result<(nftproxy_model::ClusterState, Vec<String>), kube::Error> {
    let lp = kube::api::ListParams::default().labels(PROXY_LABEL_SELECTOR);
    let mut state = nftproxy_model::ClusterState::default();
    let mut warnings = Vec::new();
    for svc in Api::<core::Service>::all(client.clone()).list(&lp).await? {
        match convert::service(&svc) {
            Ok(Ok(s)) => state.upsert_service(s),
            Ok(Err(_)) => {}
            Err(e) => warnings.push(e.to_string()),
        }
    }
    for es in Api::<discovery::EndpointSlice>::all(client.clone()).list(&lp).await? {
        match convert::endpoint_slice(&es) {
            Ok(s) => state.upsert_slice(s),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    for n in Api::<core::Node>::all(client.clone()).list(&Default::default()).await? {
        match convert::node(&n) {
            Ok(node) => state.upsert_node(node),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    // An API server without ServiceCIDRs (before 1.33) simply has none.
    match Api::<networking::ServiceCIDR>::all(client).list(&Default::default()).await {
        Ok(list) => {
            for sc in list {
                match convert::service_cidr(&sc) {
                    Ok((name, cidrs)) => {
                        state.service_cidr_objects.insert(name, cidrs);
                    }
                    Err(e) => warnings.push(e.to_string()),
                }
            }
        }
        Err(e) => warnings.push(format!("ServiceCIDRs not listed: {e}")),
    }
    Ok((state, warnings))
}

/// kube-proxy's start announcement: a Normal event `Starting` (action `StartKubeProxy`) about this
/// node's Node, as `kubectl get events` shows for kube-proxy.
pub async fn announce_start(client: Client, node_name: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let reporter = Reporter { controller: "kube-nftproxy".into(), instance: Some(node_name.to_string()) };
    let node = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node_name.to_string()),
        // kube-proxy's NodeRef uses the node name as UID.
        uid: Some(node_name.to_string()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "Starting".into(),
        note: Some("kube-nftproxy is programming this node's Services".into()),
        action: "StartKubeProxy".into(),
        secondary: None,
    };
    Recorder::new(client, reporter).publish(&ev, &node).await
}
