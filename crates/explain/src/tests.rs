use super::*;
use nftproxy_manifest::Loaded;

fn cluster() -> (ClusterState, NodeContext) {
    let mut l = Loaded::default();
    l.add_text("cluster.yaml", include_str!("../../../examples/cluster.yaml"));
    let ctx = NodeContext {
        node_name: "node-a".into(),
        node_ips: vec!["192.168.0.10".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    (l.state, ctx)
}

fn flow(src: &str, dst: &str, proto: Protocol, dport: u16) -> Flow {
    Flow { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol: proto, dport, iifname: None }
}

fn endpoints(ex: &Explanation) -> Vec<(String, f64)> {
    match &ex.verdict {
        Verdict::Dnat { candidates } => candidates.iter().map(|c| (c.endpoint.clone(), c.probability)).collect(),
        other => panic!("not a DNAT: {other:?}"),
    }
}

#[test]
fn cluster_ip_from_outside_is_masqueraded_and_spread_evenly() {
    let (state, ctx) = cluster();
    let ex = explain(&state, &ctx, flow("192.168.0.99", "10.96.10.10", Protocol::Tcp, 80), false);
    assert_eq!(ex.service_port.as_deref(), Some("shop/web:http"));
    assert_eq!(ex.frontend.as_deref(), Some("cluster IP 10.96.10.10:80"));
    let eps = endpoints(&ex);
    assert_eq!(
        eps.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["10.244.1.11:8080", "10.244.2.12:8080", "10.244.3.13:8080"]
    );
    assert!(eps.iter().all(|e| (e.1 - 1.0 / 3.0).abs() < 1e-9));
    assert!(ex.masquerade);
    assert!(ex.masquerade_reason.contains("is not pod traffic (pod CIDR 10.244.0.0/16)"), "{}", ex.masquerade_reason);
    let from_pod = explain(&state, &ctx, flow("10.244.2.12", "10.96.10.10", Protocol::Tcp, 80), false);
    assert!(!from_pod.masquerade);
    assert!(from_pod.notes.iter().any(|n| n.contains("hairpin")), "{:?}", from_pod.notes);
}

#[test]
fn wrong_port_of_a_cluster_ip_is_rejected_and_unknown_addresses_are_not_ours() {
    let (state, ctx) = cluster();
    let ex = explain(&state, &ctx, flow("10.244.1.5", "10.96.10.10", Protocol::Tcp, 81), false);
    assert!(matches!(ex.verdict, Verdict::Reject { .. }), "{:?}", ex.verdict);
    let ex = explain(&state, &ctx, flow("10.244.1.5", "10.97.0.1", Protocol::Tcp, 80), false);
    assert!(matches!(ex.verdict, Verdict::NotOurs { .. }));
    let ex = explain(&state, &ctx, flow("10.244.1.5", "10.96.10.10", Protocol::Udp, 80), false);
    assert!(matches!(ex.verdict, Verdict::Reject { .. }), "UDP 80 is not a port of web: {:?}", ex.verdict);
}

#[test]
fn etp_local_uses_local_endpoints_and_keeps_the_client_address() {
    let (state, ctx) = cluster();
    // Load-balancer IP from outside: only node-a's endpoint, source kept.
    let ex = explain(&state, &ctx, flow("198.51.100.7", "203.0.113.10", Protocol::Tcp, 443), true);
    assert_eq!(endpoints(&ex), [("10.244.1.41:8443".to_string(), 1.0)]);
    assert!(!ex.masquerade);
    // NodePort on the node IP: the same.
    let np = explain(&state, &ctx, flow("198.51.100.7", "192.168.0.10", Protocol::Tcp, 30443), false);
    assert_eq!(np.frontend.as_deref(), Some("node port 192.168.0.10:30443"));
    assert_eq!(endpoints(&np).len(), 1);
    // From a pod: short-circuited to every endpoint.
    let pod = explain(&state, &ctx, flow("10.244.1.5", "203.0.113.10", Protocol::Tcp, 443), false);
    assert_eq!(endpoints(&pod).len(), 2);
    assert!(pod.traffic.unwrap().contains("short-circuited"));
    // On another node (no local endpoint) external traffic is dropped.
    let other = NodeContext { node_name: "node-z".into(), ..ctx.clone() };
    let ex = explain(&state, &other, flow("198.51.100.7", "203.0.113.10", Protocol::Tcp, 443), false);
    assert!(matches!(ex.verdict, Verdict::Drop { .. }), "{:?}", ex.verdict);
}

#[test]
fn iptables_path_names_chains_that_exist_in_kube_proxys_rules() {
    let (state, ctx) = cluster();
    let rules = nftproxy_iptables::render_cluster(IpFamily::V4, &state, &ctx, &nftproxy_iptables::Options::default());
    for f in [
        flow("192.168.0.99", "10.96.10.10", Protocol::Tcp, 80),
        flow("198.51.100.7", "203.0.113.10", Protocol::Tcp, 443),
        flow("198.51.100.7", "192.168.0.10", Protocol::Tcp, 30443),
    ] {
        let ex = explain(&state, &ctx, f, true);
        let steps = ex.iptables.as_ref().unwrap();
        assert!(steps.len() >= 2, "{steps:?}");
        for s in steps {
            assert!(
                rules.contains(&format!(":{} - [0:0]", s.chain)) || rules.contains(&format!("-A {} ", s.chain)),
                "chain {} not in the rules",
                s.chain
            );
            if let Some(p) = &s.probability {
                let line = format!("-A {} -m comment", s.chain);
                assert!(
                    rules.lines().any(|l| l.starts_with(&line) && l.contains(&format!("--probability {p}"))),
                    "no rule of {} with --probability {p}",
                    s.chain
                );
            }
        }
    }
    // Three endpoints: 1/3 then 1/2 then the rest, as kube-proxy writes them.
    let ex = explain(&state, &ctx, flow("192.168.0.99", "10.96.10.10", Protocol::Tcp, 80), true);
    let probs: Vec<Option<String>> = ex
        .iptables
        .unwrap()
        .iter()
        .filter(|s| s.chain.starts_with("KUBE-SVC-"))
        .map(|s| s.probability.clone())
        .collect();
    assert_eq!(probs, [Some("0.3333333333".to_string()), Some("0.5000000000".to_string()), None]);
}

#[test]
fn text_names_service_and_endpoints() {
    let (state, ctx) = cluster();
    let ex = explain(&state, &ctx, flow("192.168.0.99", "10.96.20.10", Protocol::Tcp, 443), true);
    let text = render_text(&ex);
    assert!(text.contains("service:   edge/ingress:https (via its cluster IP 10.96.20.10:443)"), "{text}");
    assert!(text.contains("10.244.1.41:8443"), "{text}");
    assert!(text.contains("iptables (kube-proxy's chains):"), "{text}");
}
