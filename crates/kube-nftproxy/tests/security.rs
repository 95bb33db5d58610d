//! Security basics on the kernel, without an API server (the RBAC and token checks are in
//! `e2e_apiserver.rs`): oversized input gives a clear error or is cut to the kernel's limits
//! without losing the rest of the batch, and /metrics listens on loopback unless configured.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{NODE_FLAGS, settle, sync_once};
use nftproxy_integration::lab::Lab;
use nftproxy_integration::{Outcome, Proto, TempDir};


/// Answered (by anyone) ten times in a row within 5 s.
fn answered(lab: &Lab, to: &str, what: &str) {
    settle(&lab.client, Proto::Tcp, to, Instant::now(), Duration::from_secs(5), what, |o| matches!(o, Outcome::Answered { .. }));
}

/// Names far past Kubernetes' and the kernel's limits (300-byte Service, namespace and port
/// names, with session affinity: a set named after the Service) are cut to fit — set names to
/// the kernel's 255 bytes, comments to nft's 128 — and the Service and its neighbour work. A
/// 1 GB manifest is refused before it is read, with its size named.
#[test]
fn oversized_names_fit_the_kernel_and_a_huge_manifest_is_refused_unread() {
    let lab = Lab::new(1);
    let dir = TempDir::new(&format!("{}oversized", lab.topo.prefix()));
    let (name, ns, port) = ("s".repeat(300), "n".repeat(300), "p".repeat(300));
    let file = dir.join("long.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{clusterIP: 10.96.0.50, sessionAffinity: ClientIP, ports: [{{name: {port}, port: 80, protocol: TCP, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: long-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: {port}, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [10.244.1.2], conditions: {{ready: true}}, nodeName: node-b}}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: short, namespace: demo}}\n\
             spec: {{clusterIP: 10.96.0.51, ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: short-1, namespace: demo, labels: {{kubernetes.io/service-name: short}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [10.244.1.2], conditions: {{ready: true}}, nodeName: node-b}}]\n"
        ),
    )
    .unwrap();
    let out = sync_once(&lab.node, &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    answered(&lab, "10.96.0.50:80", "the long-named Service works");
    answered(&lab, "10.96.0.51:80", "its neighbour works");
    let table = lab.node.exec("nft", &["-j", "list", "table", "ip", "kube-nftproxy"]);
    let v: serde_json::Value = serde_json::from_str(&table).unwrap();
    let mut longest_comment = 0;
    let mut longest_name = 0;
    fn walk(v: &serde_json::Value, comment: &mut usize, name: &mut usize) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("comment", Some(c)) => *comment = (*comment).max(c.len()),
                        ("name", Some(n)) => *name = (*name).max(n.len()),
                        _ => walk(x, comment, name),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, comment, name)),
            _ => {}
        }
    }
    walk(&v, &mut longest_comment, &mut longest_name);
    assert!(longest_comment > 100 && longest_comment <= 128, "comments cut to 128 bytes: {longest_comment}");
    assert!(longest_name > 200 && longest_name <= 255, "set names cut to the kernel's limit: {longest_name}");

    // A 1 GB manifest (sparse: no disk, no memory) is refused before reading.
    let huge = dir.join("huge.yaml");
    std::fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    let before = nftproxy_integration::snapshot::snapshot(&lab.node);
    let start = Instant::now();
    let out = sync_once(&lab.node, &huge);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 1 GB manifest was accepted");
    assert!(err.contains("huge.yaml") && err.contains("1073741824 bytes"), "size and file named: {err}");
    assert!(start.elapsed() < Duration::from_secs(5), "refused without reading: {:?}", start.elapsed());
    assert!(nftproxy_integration::snapshot::snapshot(&lab.node) == before, "nothing changed");
    eprintln!(
        "300-byte names: set names {longest_name} bytes, comments {longest_comment} bytes, both Services answered; \
         1 GB manifest refused in {:?}: {}",
        start.elapsed(),
        err.lines().last().unwrap_or("")
    );
}

/// Without `--metrics-bind-address`, /metrics listens on 127.0.0.1 only (kube-proxy's default);
/// /healthz keeps kube-proxy's 0.0.0.0:10256, which load balancers probe from outside.
#[test]
fn metrics_listen_on_loopback_unless_configured() {
    let lab = Lab::new(1);
    let dir = TempDir::new(&format!("{}bind", lab.topo.prefix()));
    let file = dir.join("empty.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n").unwrap();
    let mut child = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["run", "--from", file.to_str().unwrap(), "--conntrack-max-per-core", "0"])
        .args(NODE_FLAGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = loop {
        let ss = lab.node.exec("ss", &["-ltnH"]);
        if ss.contains(":10249") && ss.contains(":10256") {
            break ss;
        }
        assert!(Instant::now() < deadline, "not listening: {ss}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let metrics: Vec<&str> = listening.lines().filter(|l| l.contains(":10249")).collect();
    assert!(metrics.iter().all(|l| l.contains("127.0.0.1:10249")), "metrics on loopback only: {metrics:?}");
    assert!(listening.lines().any(|l| l.contains("0.0.0.0:10256")), "{listening}");
}
