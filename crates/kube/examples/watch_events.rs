//! Prints what a cluster looks like to the proxy, as the service-model events the watchers
//! produce (the first lines are the complete lists, then every change):
//!
//!     cargo run -p nftproxy-kube --example watch_events -- ~/.kube/config node-a

use nftproxy_kube::{client, watch};
use nftproxy_model::SourceEvent;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kubeconfig = args.next().ok_or("usage: watch_events KUBECONFIG NODE")?;
    let node = args.next().ok_or("usage: watch_events KUBECONFIG NODE")?;
    let client = client(Some(std::path::Path::new(&kubeconfig)), None).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(watch(client, node, tx));
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::ListStarted(kind) => println!("list of {kind:?} begins"),
            SourceEvent::ListDone(kind) => println!("list of {kind:?} complete"),
            SourceEvent::ServiceApplied(s) => println!("Service {} applied ({} ports)", s.name, s.ports.len()),
            SourceEvent::ServiceDeleted(n) => println!("Service {n} deleted"),
            SourceEvent::SliceApplied(s) => {
                println!("EndpointSlice {}/{} applied ({} endpoints)", s.namespace, s.name, s.endpoints.len())
            }
            SourceEvent::SliceDeleted { namespace, name } => println!("EndpointSlice {namespace}/{name} deleted"),
            SourceEvent::Node { node, eligible } => {
                println!("Node: {:?}, eligible: {eligible}", node.map(|n| n.addresses))
            }
            SourceEvent::ServiceCidrApplied((name, cidrs)) => println!("ServiceCIDR {name} applied: {cidrs:?}"),
            SourceEvent::ServiceCidrDeleted(name) => println!("ServiceCIDR {name} deleted"),
            SourceEvent::LocalAddressesChanged => println!("interface addresses changed"),
            SourceEvent::SourceFailed(e) => println!("source failed (nothing changed): {e}"),
            SourceEvent::Warning(w) => println!("warning: {w}"),
            SourceEvent::WatchError { kind, error } => println!("{kind} watch failed (retrying): {error}"),
        }
    }
    Ok(())
}
