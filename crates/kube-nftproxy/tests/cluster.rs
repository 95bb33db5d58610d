//! A three-node cluster in namespaces (integration/src/multinode.rs): the real kube-apiserver,
//! one `kube-nftproxy run` per node watching it, pods on every node, a routed fabric between the
//! nodes, an off-cluster client and a load balancer. Real packets across nodes: which pod
//! answered and which source address it saw, as kube-proxy's rules decide them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Daemon, apply_deploy, curl, settle};
use nftproxy_integration::control_plane::PROXY_TOKEN;
use nftproxy_integration::multinode::*;
use nftproxy_integration::{Ns, Outcome, Proto, tally};
use serde_json::{Value, json};

const NODES: usize = 3;
const PODS: usize = 2;
/// From a Service change to every node's rules (generous: three daemons share two cores).
const SETTLE: Duration = Duration::from_secs(20);

/// One daemon per node, as the DaemonSet runs them: the node's own name, the API server over
/// the node's link, the proxy's service account.
fn start_proxies(mn: &MultiNode) -> Vec<Daemon> {
    mn.nodes
        .iter()
        .map(|n| {
            let kc = mn.cp.kubeconfig(&n.api_ip, 6443, PROXY_TOKEN, &format!("proxy-{}", n.name));
            Daemon::start_exact(
                &n.ns,
                mn.cp.dir.join(format!("{}.log", n.name)),
                &[
                    "--kubeconfig",
                    kc.to_str().unwrap(),
                    "--hostname-override",
                    &n.name,
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--metrics-bind-address",
                    "127.0.0.1:10249",
                    "--healthz-bind-address",
                    "0.0.0.0:10256",
                    "--iptables-min-sync-period",
                    "0s",
                ],
            )
        })
        .collect()
}

fn cluster() -> (MultiNode, Vec<Daemon>) {
    let mn = MultiNode::new(NODES, PODS);
    apply_deploy(&mn.cp);
    let proxies = start_proxies(&mn);
    (mn, proxies)
}

/// `n` requests from `from` to `to`: the set of pods that answered and the sources they saw.
fn spread(from: &Ns, proto: Proto, to: &str, n: usize) -> (BTreeSet<String>, BTreeSet<String>, usize) {
    let to: SocketAddr = to.parse().unwrap();
    let t = tally(from, proto, to, None, n, Duration::from_millis(500));
    let answered = t.count(|o| matches!(o, Outcome::Answered { .. }));
    let who = t.by_responder().keys().cloned().collect();
    let sources = t.seen_sources().iter().map(|s| s.to_string()).collect();
    (who, sources, answered)
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// Every request of `n` answered, by exactly the pods `pods`, each seeing `source`.
fn expect(from: &Ns, proto: Proto, to: &str, pods: &[String], source: &str, what: &str) {
    let (who, sources, answered) = spread(from, proto, to, 30);
    assert_eq!(answered, 30, "{what}: every request answered (by {who:?})");
    assert_eq!(who, set(pods), "{what}: answered by");
    assert_eq!(sources, set(&[source.to_string()]), "{what}: source seen");
}

/// No answer at all (dropped), over a few requests.
fn expect_dropped(from: &Ns, proto: Proto, to: &str, what: &str) {
    let to: SocketAddr = to.parse().unwrap();
    let t = tally(from, proto, to, None, 4, Duration::from_millis(300));
    let refused = t.count(|o| *o == Outcome::Refused);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 4, "{what}: dropped, got {:?}, {refused} refused", t.by_responder());
}

fn lb_service(name: &str, ip: &str, node_port: u16, hc_port: u16) -> Value {
    service(
        name,
        ip,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": hc_port, "ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": node_port},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": node_port}]}),
    )
}

/// The health-check answer of node `k` for a Service's healthCheckNodePort: status and
/// `localEndpoints`.
fn health(mn: &MultiNode, k: usize, port: u16) -> (u16, i64) {
    let (code, body) = curl(&mn.lb, &format!("http://{}:{port}/", node_ip(k)));
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (code, v["localEndpoints"].as_i64().unwrap_or(-1))
}

#[test]
fn cross_node_traffic_follows_kube_proxys_policies_on_three_nodes() {
    let (mn, _proxies) = cluster();
    let pod = |k: usize, j: usize| &mn.node(k).pods[j - 1];
    let p = |k: usize, j: usize| pod_name(k, j);

    // Endpoints only on other nodes; one on the pod's own node; the pod itself (hairpin).
    mn.cp.create(&service("remote", "10.96.1.1", json!({})));
    mn.cp.create(&slice("remote", &[Ep::ready(2, 1), Ep::ready(3, 1)]));
    mn.cp.create(&service("local", "10.96.1.2", json!({})));
    mn.cp.create(&slice("local", &[Ep::ready(1, 2)]));
    mn.cp.create(&service("self", "10.96.1.3", json!({})));
    mn.cp.create(&slice("self", &[Ep::ready(1, 1)]));
    // NodePort, ETP=Cluster, its one endpoint on node 2.
    mn.cp.create(&service(
        "np",
        "10.96.1.4",
        json!({"type": "NodePort", "ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": 30081},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": 30081}]}),
    ));
    mn.cp.create(&slice("np", &[Ep::ready(2, 2)]));
    // LoadBalancer, ETP=Local, both endpoints on node 2.
    mn.cp.create(&lb_service("lb", "10.96.1.5", 30082, 32101));
    mn.cp.create(&slice("lb", &[Ep::ready(2, 1), Ep::ready(2, 2)]));
    // ITP=Local with endpoints on nodes 1 and 2, none on node 3.
    mn.cp.create(&service("itp", "10.96.1.6", json!({"internalTrafficPolicy": "Local"})));
    mn.cp.create(&slice("itp", &[Ep::ready(1, 1), Ep::ready(2, 1)]));
    // Topology: zone hints as the EndpointSlice controller sets them for PreferClose; nodes 1
    // and 3 are in zone-a, node 2 in zone-b.
    mn.cp.create(&service("topo", "10.96.1.7", json!({"trafficDistribution": "PreferClose"})));
    mn.cp.create(&slice(
        "topo",
        &[Ep::ready(1, 2).hinted("zone-a"), Ep::ready(2, 2).hinted("zone-b"), Ep::ready(3, 2).hinted("zone-a")],
    ));
    let t = Instant::now();
    for k in 1..=NODES {
        let ok = |o: &Outcome| matches!(o, Outcome::Answered { responder, .. } if responder.starts_with("n2-p2"));
        settle(pod(k, 1), Proto::Tcp, "10.96.1.4:80", t, SETTLE, &format!("node {k} programmed"), ok);
    }
    eprintln!("three nodes programmed {:?} after the last Service", t.elapsed());

    // Pod → ClusterIP: endpoints on other nodes, routed across the fabric, source kept.
    for proto in [Proto::Tcp, Proto::Udp] {
        expect(pod(1, 1), proto, "10.96.1.1:80", &[p(2, 1), p(3, 1)], &pod_ip(1, 1), "pod → ClusterIP, remote endpoints");
        expect(pod(1, 1), proto, "10.96.1.2:80", &[p(1, 2)], &pod_ip(1, 1), "pod → ClusterIP, own-node endpoint");
        expect(pod(3, 2), proto, "10.96.1.2:80", &[p(1, 2)], &pod_ip(3, 2), "pod on node 3 → endpoint on node 1");
        // Hairpin: the pod reaches itself, masqueraded to its node's bridge address.
        expect(pod(1, 1), proto, "10.96.1.3:80", &[p(1, 1)], &node_bridge_ip(1), "hairpin");
    }

    // NodePort, ETP=Cluster: through any node, forwarded to node 2 and masqueraded to the
    // address the node the client hit sends from: its fabric address towards another node, its
    // bridge address to its own pod.
    for k in 1..=NODES {
        let np = format!("{}:30081", node_ip(k));
        let seen = if k == 2 { node_bridge_ip(2) } else { node_ip(k) };
        expect(&mn.client, Proto::Tcp, &np, &[p(2, 2)], &seen, &format!("NodePort via node {k}"));
        expect(&mn.client, Proto::Udp, &np, &[p(2, 2)], &seen, &format!("UDP NodePort via node {k}"));
    }

    // ETP=Local: served (client address kept) only where endpoints are; dropped elsewhere;
    // the health check says which nodes to send to.
    for proto in [Proto::Tcp, Proto::Udp] {
        let np = format!("{}:30082", node_ip(2));
        expect(&mn.lb, proto, &np, &[p(2, 1), p(2, 2)], LB_IP, "ETP=Local on the endpoints' node");
        for k in [1, 3] {
            expect_dropped(&mn.lb, proto, &format!("{}:30082", node_ip(k)), &format!("ETP=Local on node {k}"));
        }
    }
    assert_eq!(health(&mn, 2, 32101), (200, 2), "node 2 has both endpoints");
    assert_eq!(health(&mn, 1, 32101), (503, 0), "node 1 has none");
    assert_eq!(health(&mn, 3, 32101), (503, 0), "node 3 has none");

    // ITP=Local: each node's pods reach only their node's endpoints; none on node 3: dropped.
    expect(pod(1, 2), Proto::Tcp, "10.96.1.6:80", &[p(1, 1)], &pod_ip(1, 2), "ITP=Local from node 1");
    expect(pod(2, 2), Proto::Tcp, "10.96.1.6:80", &[p(2, 1)], &pod_ip(2, 2), "ITP=Local from node 2");
    expect_dropped(pod(3, 1), Proto::Tcp, "10.96.1.6:80", "ITP=Local from node 3");

    // Topology: each node uses the endpoints hinted for its zone.
    expect(pod(1, 1), Proto::Tcp, "10.96.1.7:80", &[p(1, 2), p(3, 2)], &pod_ip(1, 1), "zone-a from node 1");
    expect(pod(3, 1), Proto::Tcp, "10.96.1.7:80", &[p(1, 2), p(3, 2)], &pod_ip(3, 1), "zone-a from node 3");
    expect(pod(2, 1), Proto::Tcp, "10.96.1.7:80", &[p(2, 2)], &pod_ip(2, 1), "zone-b from node 2");
}

/// kube-proxy's node health (`/healthz` on 10256) and what a node's life does to it: a node
/// marked for deletion by the cluster autoscaler fails its health check (so load balancers stop
/// sending to it) while the others stay healthy and keep serving; a deleted node's proxy keeps
/// its rules.
#[test]
fn node_health_follows_the_node_lifecycle_on_three_nodes() {
    let (mn, _proxies) = cluster();
    mn.cp.create(&service(
        "np",
        "10.96.2.1",
        json!({"type": "NodePort", "ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": POD_PORT, "nodePort": 30091},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": POD_PORT, "nodePort": 30091}]}),
    ));
    mn.cp.create(&slice("np", &[Ep::ready(1, 1), Ep::ready(2, 1)]));
    let t = Instant::now();
    let answered = |o: &Outcome| matches!(o, Outcome::Answered { .. });
    for k in 1..=NODES {
        settle(&mn.client, Proto::Tcp, &format!("{}:30091", node_ip(k)), t, SETTLE, "NodePort", answered);
    }
    let node_health = |k: usize| {
        let (code, body) = curl(&mn.lb, &format!("http://{}:10256/healthz", node_ip(k)));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (code, v["nodeEligible"].as_bool())
    };
    for k in 1..=NODES {
        assert_eq!(node_health(k), (200, Some(true)), "node {k} healthy");
    }

    // Drained for deletion: the autoscaler's taint.
    let mut node3 = mn.cp.api("GET", "/api/v1/nodes/node-3", None);
    node3["spec"]["taints"] = json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]);
    mn.cp.api("PUT", "/api/v1/nodes/node-3", Some(&node3));
    let t = Instant::now();
    while node_health(3).0 != 503 {
        assert!(t.elapsed() < SETTLE, "node 3's /healthz still {:?}", node_health(3));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("node 3 unhealthy {:?} after the taint", t.elapsed());
    assert_eq!(node_health(3), (503, Some(false)));
    for k in [1, 2] {
        assert_eq!(node_health(k), (200, Some(true)), "node {k} unaffected");
        let (who, _, n) = spread(&mn.client, Proto::Tcp, &format!("{}:30091", node_ip(k)), 10);
        assert_eq!((n, who.len()), (10, 2), "node {k} serves the NodePort: {who:?}");
    }

    // Deleted: kube-proxy v1.34.4 only logs it (NodeManager.OnNodeDelete): node 3 keeps its
    // node IPs and last health (the taint: 503) and goes on serving, and so do the others.
    mn.cp.api("DELETE", "/api/v1/nodes/node-3", None);
    let t = Instant::now();
    while !std::fs::read_to_string(mn.cp.dir.join("node-3.log")).unwrap_or_default().contains("is being deleted") {
        assert!(t.elapsed() < SETTLE, "node 3's proxy did not see the deletion");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A Service change after the deletion still reaches node 3's rules.
    mn.cp.replace(&slice("np", &[Ep::ready(1, 1), Ep::ready(2, 1), Ep::ready(3, 1)]));
    for k in 1..=NODES {
        let t = Instant::now();
        let by_node3 = |o: &Outcome| matches!(o, Outcome::Answered { responder, .. } if responder == "n3-p1");
        let np = format!("{}:30091", node_ip(k));
        // Reached through node k at least once: the new endpoint is in node k's rules.
        while !by_node3(&common::ask(&mn.client, Proto::Tcp, &np)) {
            assert!(t.elapsed() < SETTLE, "node {k} never sent to the new endpoint on node 3");
        }
        let (who, _, n) = spread(&mn.client, Proto::Tcp, &np, 30);
        assert_eq!((n, who.len()), (30, 3), "node {k} after node 3's deletion: {who:?}");
    }
    assert_eq!(node_health(3), (503, Some(false)), "the last object seen had the taint");
}


