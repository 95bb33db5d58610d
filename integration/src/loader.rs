//! Creates API objects quickly: one kube-rs client (keep-alive HTTPS, connections reused) with
//! many requests in flight, run from inside the control-plane namespace. Creating 10,000 Services
//! with their slices one `curl` at a time takes minutes; this makes the 50k runs spend their time
//! in the proxies, not in object creation.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::control_plane::{ADMIN_TOKEN, ControlPlane, collection_path, object_path};

/// Creates every object (in order of groups: each group finishes before the next starts, so
/// Services exist before the objects that follow them), `in_flight` requests at a time. Returns
/// how long it took. Panics naming the first object the API server refused.
pub fn create_all(cp: &ControlPlane, groups: &[Vec<Value>], in_flight: usize) -> Duration {
    send_all(cp, groups, in_flight, Write::Create)
}

/// Replaces every object by an unconditional PUT (no resourceVersion: for kinds whose strategy
/// allows it, as EndpointSlices' does), like `create_all` otherwise.
pub fn replace_all(cp: &ControlPlane, groups: &[Vec<Value>], in_flight: usize) -> Duration {
    send_all(cp, groups, in_flight, Write::Replace)
}

#[derive(Clone, Copy)]
enum Write {
    Create,
    Replace,
}

fn send_all(cp: &ControlPlane, groups: &[Vec<Value>], in_flight: usize, write: Write) -> Duration {
    let kubeconfig = cp.kubeconfig("127.0.0.1", 6443, ADMIN_TOKEN, "loader");
    cp.ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async {
            let client = nftproxy_kube::client(Some(&kubeconfig), None).await.expect("API client");
            let start = Instant::now();
            for group in groups {
                let results: Vec<Result<(), String>> = futures::stream::iter(group.iter())
                    .map(|obj| {
                        let client = client.clone();
                        async move {
                            let req = match write {
                                Write::Create => http::Request::post(collection_path(obj)),
                                Write::Replace => http::Request::put(object_path(obj)),
                            };
                            let req = req
                                .header("Content-Type", "application/json")
                                .body(serde_json::to_vec(obj).unwrap())
                                .unwrap();
                            client
                                .request::<Value>(req)
                                .await
                                .map(|_| ())
                                .map_err(|e| format!("{} {}: {e}", obj["kind"], obj["metadata"]["name"]))
                        }
                    })
                    .buffer_unordered(in_flight)
                    .collect()
                    .await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    panic!("creating objects: {e}");
                }
            }
            start.elapsed()
        })
    })
}
