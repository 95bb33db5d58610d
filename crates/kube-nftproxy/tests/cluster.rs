//! A three-node cluster in namespaces (integration/src/multinode.rs): the real kube-apiserver,
//! one `kube-nftproxy run` per node watching it, pods on every node, a routed fabric between the
//! nodes, an off-cluster client and a load balancer. Real packets across nodes: which pod
//! answered and which source address it saw, as kube-proxy's rules decide them.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, apply_deploy, curl, load, settle};
use nftproxy_integration::control_plane::PROXY_TOKEN;
use nftproxy_integration::multinode::*;
use nftproxy_integration::{Ns, Outcome, Proto, tally};
use serde_json::{Value, json};

const NODES: usize = 3;
const PODS: usize = 2;
/// From a Service change to every node's rules (generous: three daemons share two cores).
const SETTLE: Duration = Duration::from_secs(20);

/// Node `n`'s daemon, as the DaemonSet runs it: the node's own name, the API server over the
/// node's link, the proxy's service account; `extra` flags after those.
fn start_proxy(mn: &MultiNode, n: &Node, extra: &[&str]) -> Daemon {
    let kc = mn.cp.kubeconfig(&n.api_ip, 6443, PROXY_TOKEN, &format!("proxy-{}", n.name));
    let base = [
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
    ];
    Daemon::start_exact(&n.ns, mn.cp.dir.join(format!("{}.log", n.name)), &[&base[..], extra].concat())
}

/// One daemon per node, without kube-proxy's minimum sync period.
fn start_proxies(mn: &MultiNode) -> Vec<Daemon> {
    mn.nodes.iter().map(|n| start_proxy(mn, n, &["--iptables-min-sync-period", "0s"])).collect()
}

fn cluster() -> (MultiNode, Vec<Daemon>) {
    cluster_with(PODS)
}

fn cluster_with(pods: usize) -> (MultiNode, Vec<Daemon>) {
    let mn = MultiNode::new(NODES, pods);
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
    mn.cp.create(&node_port_service("np", "10.96.1.4", 30081));
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
    // PreferSameNode: node hints (and zone hints) as the controller sets them.
    mn.cp.create(&service("samenode", "10.96.1.8", json!({"trafficDistribution": "PreferSameNode"})));
    mn.cp.create(&slice("samenode", &[Ep::ready(1, 2).for_own_node(), Ep::ready(2, 2).for_own_node(), Ep::ready(3, 2).for_own_node()]));
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
    // PreferSameNode: each node its own endpoint only.
    for k in 1..=NODES {
        expect(pod(k, 1), Proto::Tcp, "10.96.1.8:80", &[p(k, 2)], &pod_ip(k, 1), &format!("same node from node {k}"));
    }
}

/// kube-proxy's node health (`/healthz` on 10256) and what a node's life does to it: a node
/// marked for deletion by the cluster autoscaler fails its health check (so load balancers stop
/// sending to it) while the others stay healthy and keep serving; a deleted node's proxy keeps
/// its rules.
#[test]
fn node_health_follows_the_node_lifecycle_on_three_nodes() {
    let (mn, _proxies) = cluster();
    mn.cp.create(&node_port_service("np", "10.96.2.1", 30091));
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



/// One line over a held TCP connection: the pod that answered.
fn over(conn: &mut (TcpStream, BufReader<TcpStream>)) -> std::io::Result<String> {
    conn.0.write_all(b"again\n")?;
    let mut line = String::new();
    conn.1.read_line(&mut line)?;
    Ok(line.split_whitespace().next().unwrap_or("").to_string())
}

/// A Deployment-like rollout (maxSurge 1, maxUnavailable 0) while a client pod on every node
/// keeps opening new connections to the Service: new endpoints become ready on other nodes, old
/// ones go serving-terminating, then leave the slice. No request fails, and a connection
/// established to an old endpoint before the rollout still works after that endpoint is gone
/// (kube-proxy never flushes TCP conntrack entries; terminating pods finish their connections).
#[test]
fn a_rolling_update_under_load_on_three_nodes_loses_no_request_and_cuts_no_connection() {
    let (mn, _proxies) = cluster_with(3);
    let vip = "10.96.3.1:80";
    mn.cp.create(&service("web", "10.96.3.1", json!({})));
    mn.cp.create(&slice("web", &[Ep::ready(1, 1), Ep::ready(2, 1)]));
    let t = Instant::now();
    for n in &mn.nodes {
        let ok = |o: &Outcome| matches!(o, Outcome::Answered { .. });
        settle(&n.pods[2], Proto::Tcp, vip, t, SETTLE, &format!("node {} programmed", n.k), ok);
    }

    // A connection from node 3's client held to the old endpoint on node 1.
    let client3 = &mn.node(3).pods[2];
    let mut held = None;
    for _ in 0..64 {
        let c = client3.run(|| {
            let s = TcpStream::connect_timeout(&vip.parse().unwrap(), Duration::from_secs(1)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        });
        let mut c = c;
        if over(&mut c).unwrap() == pod_name(1, 1) {
            held = Some(c);
            break;
        }
    }
    let mut held = held.expect("a connection to n1-p1 among 64");

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = mn.nodes.iter().map(|n| load(&n.pods[2], vip, stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(500));
    let steps: [&[Ep]; 5] = [
        &[Ep::ready(1, 1), Ep::ready(2, 1), Ep::ready(3, 1)],
        &[Ep::terminating(1, 1), Ep::ready(2, 1), Ep::ready(3, 1)],
        &[Ep::ready(2, 1), Ep::ready(3, 1), Ep::ready(1, 2)],
        &[Ep::terminating(2, 1), Ep::ready(3, 1), Ep::ready(1, 2)],
        &[Ep::ready(3, 1), Ep::ready(1, 2)],
    ];
    for eps in steps {
        mn.cp.replace(&slice("web", eps));
        std::thread::sleep(Duration::from_millis(700));
        // The held connection, used at every step (the responder closes it after 5 s idle).
        assert_eq!(over(&mut held).unwrap(), pod_name(1, 1), "the held connection during the rollout");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (n, h) in mn.nodes.iter().zip(loads) {
        let (ok, failed) = h.join().unwrap();
        assert!(failed.is_empty(), "node {}: {} of {} failed: {:?}", n.k, failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
        assert!(ok > 100, "node {}: only {ok} requests", n.k);
        total += ok;
    }
    eprintln!("rollout: {total} requests from three nodes, 0 failed");
    assert_eq!(over(&mut held).unwrap(), pod_name(1, 1), "the held connection after n1-p1 left the slice");
    // Only the new endpoints are chosen now, from every node.
    for n in &mn.nodes {
        let (who, _, answered) = spread(&n.pods[2], Proto::Tcp, vip, 30);
        assert_eq!(answered, 30);
        assert_eq!(who, set(&[pod_name(3, 1), pod_name(1, 2)]), "node {} after the rollout", n.k);
    }
}

/// `make cluster`: KNP_CLUSTER_NODES nodes (default 20), network-programming latency across the
/// cluster, and a node joining a cluster of KNP_CLUSTER_SERVICES Services (default 10,000) under
/// traffic. Reports, asserts only that no request failed and every change arrived. Latency is
/// probed by traffic from each node's own namespace (a new TCP connection every 2 ms, 10 ms
/// timeout): each figure can be up to ~12 ms late.
#[test]
#[ignore = "make cluster: minutes long"]
fn cluster_scale_scenario() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (nodes, services, changes) =
        (env("KNP_CLUSTER_NODES", 20), env("KNP_CLUSTER_SERVICES", 10_000), env("KNP_CLUSTER_CHANGES", 30));
    let started = Instant::now();
    let mn = MultiNode::new(nodes, 1);
    apply_deploy(&mn.cp);
    eprintln!("cluster of {nodes} nodes built in {:.1?}", started.elapsed());
    let mut report = format!("Cluster: {nodes} nodes (one kube-nftproxy each), 1 pod per node, the real kube-apiserver.\n\n");

    let mut proxies: Vec<Option<Daemon>> = Vec::new();

    // Network-programming latency: API write → every node's kernel has the change (probed from
    // each node's own namespace), with kube-proxy's default minimum sync period and with none.
    report.push_str(
        "| proxy, min-sync | changes × nodes | p50 | p90 | p99 | max | the proxies' own metric over the same changes |\n|---|---|---|---|---|---|---|\n",
    );
    let running = &mn.nodes[..nodes - 1];
    let phases = [
        ("kube-nftproxy, `--iptables-min-sync-period 0s`", &["--iptables-min-sync-period", "0s"][..]),
        ("kube-nftproxy, default (1s)", &[][..]),
    ];
    for (phase, (label, extra)) in phases.into_iter().enumerate() {
        proxies.clear();
        proxies.extend(running.iter().map(|n| Some(start_proxy(&mn, n, extra))));
        report.push_str(&latency_row(&mn, running, changes, phase, label));
    }

    // The same changes with the real kube-proxy v1.34.4 (nftables mode, its minimum sync period
    // off as in the first row) on the same nodes, our tables removed first.
    proxies.clear();
    let mut kube_proxies = Vec::new();
    for n in running {
        let out = n.ns.command(env!("CARGO_BIN_EXE_kube-nftproxy")).args(["run", "--cleanup"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let kc = mn.cp.kubeconfig(&n.api_ip, 6443, nftproxy_integration::control_plane::ADMIN_TOKEN, &format!("kp-{}", n.name));
        let peers = nftproxy_integration::control_plane::peers_dir();
        let cmd = nftproxy_integration::peer::command(&peers, &n.ns, &kc, nftproxy_integration::peer::Mode::Nftables, &n.name, CLUSTER_CIDR);
        kube_proxies.push(nftproxy_integration::peer::KubeProxy::start(cmd, &n.ns, mn.cp.dir.join(format!("kp-{}.log", n.name))));
    }
    for n in running {
        // Every node's kube-proxy has synced: a Service from the phases above answers.
        let ok = |o: &Outcome| matches!(o, Outcome::Answered { .. });
        settle(&n.ns, Proto::Tcp, "10.96.202.1:80", Instant::now(), Duration::from_secs(120), &format!("kube-proxy on {}", n.name), ok);
    }
    report.push_str(&latency_row(&mn, running, changes, 2, "kube-proxy v1.34.4 nftables, `--iptables-min-sync-period 0s`"));
    for kp in &mut kube_proxies {
        kp.assert_running();
    }
    drop(kube_proxies);
    // Ours again (they take the nodes over from kube-proxy's leftover tables).
    proxies.extend(running.iter().map(|n| Some(start_proxy(&mn, n, &["--iptables-min-sync-period", "0s"]))));

    // A node joins a cluster of `services` Services while a client keeps connecting through
    // node 1 (NodePort, endpoint on node 2): nothing fails there, and the new node serves once
    // its cold start is done.
    mn.cp.create(&node_port_service("np", "10.96.201.1", 30100));
    mn.cp.create(&slice("np", &[Ep::ready(2, 1)]));
    mn.cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": nftproxy_integration::headtohead::NAMESPACE}}));
    // The API server's side, per node: bytes its link carried to the node while the Services
    // were created and reached every node, and the node's connections to it.
    let rx = |n: &Node| n.ns.exec("cat", &["/sys/class/net/cp0/statistics/rx_bytes"]).trim().parse::<f64>().unwrap_or(0.0);
    let rx_before: Vec<f64> = running.iter().map(rx).collect();
    let t = Instant::now();
    let objects = nftproxy_integration::headtohead::objects(services, 1);
    let load_time = nftproxy_integration::loader::create_all(&mn.cp, &objects, 64);
    mn.cp.create(&service("late", "10.96.201.2", json!({})));
    mn.cp.create(&slice("late", &[Ep::ready(1, 1)]));
    for n in &mn.nodes[..nodes - 1] {
        let ok = |o: &Outcome| matches!(o, Outcome::Answered { .. });
        settle(&n.ns, Proto::Tcp, "10.96.201.2:80", t, Duration::from_secs(600), &format!("{} has every Service", n.name), ok);
    }
    eprintln!("{services} Services loaded in {load_time:.1?}; every node had them {:.1?} after the first", t.elapsed());
    let mut mib: Vec<f64> = running.iter().zip(&rx_before).map(|(n, b)| (rx(n) - b) / 1048576.0).collect();
    mib.sort_by(f64::total_cmp);
    let mut conns: Vec<usize> = running
        .iter()
        .map(|n| n.ns.exec("ss", &["-Htn", "state", "established", "( dport = :6443 )"]).lines().count())
        .collect();
    conns.sort();
    report.push_str(&format!(
        "\nThe API server's side while {services} Services were created and reached every node: {:.1} / {:.1} / {:.1} MiB to each node (min / median / max, the node's link counters), {} / {} / {} TCP connections per node to it.\n",
        mib[0],
        mib[mib.len() / 2],
        mib[mib.len() - 1],
        conns[0],
        conns[conns.len() / 2],
        conns[conns.len() - 1]
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&mn.client, &format!("{}:30100", node_ip(1)), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let joining = &mn.nodes[nodes - 1];
    let t = Instant::now();
    proxies.push(Some(start_proxy(&mn, joining, &["--iptables-min-sync-period", "0s"])));
    let ok = |o: &Outcome| matches!(o, Outcome::Answered { .. });
    let cold = settle(&joining.ns, Proto::Tcp, "10.96.201.2:80", t, Duration::from_secs(300), "the joining node", ok);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok_n, failed) = traffic.join().unwrap();
    assert!(failed.is_empty(), "{} of {} requests through node 1 failed: {:?}", failed.len(), ok_n + failed.len(), &failed[..failed.len().min(5)]);
    report.push_str(&format!(
        "\nNode join: {services} Services × 1 endpoint in the API server (created in {:.1} s); node {} started its proxy and served a Service {:.2} s later (its cold start), while {ok_n} new connections through node 1 all succeeded.\n",
        load_time.as_secs_f64(),
        joining.name,
        cold.as_secs_f64()
    ));

    // Each daemon's RSS and CPU.
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for d in proxies.iter().flatten() {
        rss.push(nftproxy_integration::proc_status_kb(d.pid(), "VmRSS:") as f64 / 1024.0);
        cpu.push(nftproxy_integration::headtohead::cpu_seconds(d.pid()));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v.first().copied().unwrap_or(0.0), v[v.len() / 2], v.last().copied().unwrap_or(0.0))
    };
    let (r0, r1, r2) = stats(&mut rss);
    let (c0, c1, c2) = stats(&mut cpu);
    report.push_str(&format!(
        "\nPer daemon at the end (min / median / max over {} nodes): RSS {r0:.0} / {r1:.0} / {r2:.0} MiB; CPU {c0:.1} / {c1:.1} / {c2:.1} s.\n",
        rss.len()
    ));
    report.push_str(&format!("\nWall time: {:.0} s.\n", started.elapsed().as_secs_f64()));
    println!("\n{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/cluster-report.md");
    std::fs::write(&out, &report).unwrap();
    eprintln!("report written to {}", out.display());
}

/// One row of the latency table: `changes` changes of phase `phase` timed on every node of
/// `nodes`, quantiles over (change, node), and the proxies' own metric over the same changes.
fn latency_row(mn: &MultiNode, nodes: &[Node], changes: usize, phase: usize, label: &str) -> String {
    // Every proxy past its first syncs: they observe the trigger times of every slice already
    // there (minutes old), which are not these changes.
    for n in nodes {
        let t = Instant::now();
        loop {
            let (_, m) = curl(&n.ns, "http://127.0.0.1:10249/metrics");
            let synced = m.lines().any(|l| {
                l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
                    && l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
            });
            if synced {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "{}'s proxy never synced", n.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = programming_metric(nodes);
    let lat = programming_latency(mn, nodes, changes, phase);
    let after = programming_metric(nodes);
    // The proxies' own view over the same changes: trigger time → rules in the kernel (mean,
    // and the share within 0.5 s and 1 s: kube-proxy's buckets go no finer).
    let d: Vec<f64> = (0..4).map(|i| after[i] - before[i]).collect();
    let count = d[1].max(1.0);
    let own = format!("{:.1} ms; {:.0}% ≤ 0.5 s, {:.0}% ≤ 1 s", d[0] / count * 1e3, d[2] / count * 100.0, d[3] / count * 100.0);
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let row = format!(
        "| {label} | {changes} × {} | {} | {} | {} | {} | {own} |\n",
        nodes.len(),
        ms(q(0.5)),
        ms(q(0.9)),
        ms(q(0.99)),
        ms(*lat.last().unwrap()),
    );
    eprint!("programming latency {row}");
    row
}

/// Over every node's proxy, from `kubeproxy_network_programming_duration_seconds` (IPv4, or
/// unlabelled): sum, count, and the counts of the buckets le="0.5" and le="1".
fn programming_metric(nodes: &[Node]) -> [f64; 4] {
    const NAME: &str = "kubeproxy_network_programming_duration_seconds";
    let mut total = [0.0; 4];
    for n in nodes {
        let (_, m) = curl(&n.ns, "http://127.0.0.1:10249/metrics");
        for line in m.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if labels.contains("ip_family=") && !labels.contains("ip_family=\"IPv4\"") {
                continue;
            }
            let slot = match name.strip_prefix(NAME) {
                Some("_sum") => 0,
                Some("_count") => 1,
                Some("_bucket") if labels.contains("le=\"0.5\"") => 2,
                Some("_bucket") if labels.contains("le=\"1\"") => 3,
                _ => continue,
            };
            total[slot] += value;
        }
    }
    total
}

/// `changes` (at most 750) EndpointSlice changes of phase `phase` (a new Service's endpoint,
/// scaled to two endpoints, its endpoint moved to another node, in turn), each timed from just
/// before its API write (a `curl` run in the control-plane namespace, as the whole harness
/// writes: its own ~10–30 ms are included) until every node in `nodes` answers as the change
/// says: sorted latencies, one per (change, node).
fn programming_latency(mn: &MultiNode, nodes: &[Node], changes: usize, phase: usize) -> Vec<Duration> {
    let n = nodes.len();
    let mut out = Vec::new();
    for c in 0..changes {
        let svc = format!("lat{phase}-{}", c / 3);
        let vip = format!("10.96.{}.{}", 202 + phase, c / 3 + 1);
        let home = (c / 3) % n + 1;
        let (eps, want): (Vec<Ep>, String) = match c % 3 {
            0 => (vec![Ep::ready(home, 1)], pod_name(home, 1)),
            1 => (vec![Ep::ready(home, 1), Ep::ready(home % n + 1, 1)], pod_name(home % n + 1, 1)),
            _ => (vec![Ep::ready((home + 1) % n + 1, 1)], pod_name((home + 1) % n + 1, 1)),
        };
        let go = Arc::new(AtomicBool::new(false));
        let t0 = Arc::new(std::sync::Mutex::new(Instant::now()));
        let probes: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (ns, to, want, go, t0) = (node.ns.clone(), format!("{vip}:80"), want.clone(), go.clone(), t0.clone());
                std::thread::spawn(move || {
                    ns.run(|| {
                        while !go.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        let start = *t0.lock().unwrap();
                        let to: SocketAddr = to.parse().unwrap();
                        loop {
                            if let Outcome::Answered { responder, .. } =
                                nftproxy_integration::request(Proto::Tcp, to, None, Duration::from_millis(10))
                                && responder == want
                            {
                                return start.elapsed();
                            }
                            assert!(start.elapsed() < Duration::from_secs(60), "{to} never answered by {want}");
                            // 2 ms apart: twenty probing threads must not starve the daemons of
                            // the two cores they measure.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    })
                })
            })
            .collect();
        if c % 3 == 0 {
            // The Service first, untimed: what is timed is its endpoints' arrival.
            mn.cp.create(&service(&svc, &vip, json!({})));
        }
        *t0.lock().unwrap() = Instant::now();
        go.store(true, Ordering::Release);
        if c % 3 == 0 {
            mn.cp.create(&slice(&svc, &eps));
        } else {
            mn.cp.replace(&slice(&svc, &eps));
        }
        for p in probes {
            out.push(p.join().unwrap());
        }
    }
    out.sort();
    out
}
