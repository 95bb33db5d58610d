//! The nftables backend on the real kernel: real packets through a node namespace programmed
//! over netlink, checking which endpoint answered and which source address it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use nftproxy_integration::lab::*;
use nftproxy_integration::yaml::{ep, service, slice};
use nftproxy_integration::{Outcome, Proto, Tally};

const HTTP_DNS: &str =
    "{name: http, port: 80, protocol: TCP, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: 8080}";
const SLICE_PORTS: &str = "{name: http, port: 8080, protocol: TCP}, {name: dns, port: 8080, protocol: UDP}";
/// χ² critical value for 2 degrees of freedom at p = 0.001: an even spread fails this 1 in 1000.
const CHI2_DF2_P001: f64 = 13.82;

fn answered(t: &Tally) -> usize {
    t.count(|o| matches!(o, Outcome::Answered { .. }))
}

fn web(eps: &[(&str, &str)]) -> String {
    let eps: Vec<_> = eps.iter().map(|(ip, node)| ep(ip, node)).collect();
    service("web", "10.96.0.10", HTTP_DNS, "") + &slice("web", "web-1", "IPv4", SLICE_PORTS, &eps)
}

fn three_pods() -> String {
    web(&[(&pod_ip(1), "node-b"), (&pod_ip(2), "node-c"), (&pod_ip(3), NODE)])
}

fn sources(t: &Tally) -> BTreeSet<String> {
    t.seen_sources().iter().map(|s| s.to_string()).collect()
}

#[test]
fn cluster_ip_spreads_tcp_and_udp_evenly_over_three_endpoints() {
    let mut lab = Lab::new(3);
    lab.sync(&three_pods()).unwrap();
    for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
        let t = lab.tally(&lab.client, proto, &format!("10.96.0.10:{port}"), 300);
        assert_eq!(answered(&t), 300, "{proto:?}: {t:?}");
        let by = t.by_responder();
        assert_eq!(by.keys().cloned().collect::<Vec<_>>(), ["ep1", "ep2", "ep3"], "{proto:?}");
        let chi2 = t.chi_square_uniform(3);
        assert!(chi2 < CHI2_DF2_P001, "{proto:?} spread {by:?} has chi² {chi2:.2}");
        // The client is outside the cluster CIDR: masqueraded to the node's address on each link.
        assert_eq!(sources(&t), [pod_gw(1), pod_gw(2), pod_gw(3)].into_iter().collect(), "{proto:?}");
    }
}

#[test]
fn pod_traffic_to_a_cluster_ip_keeps_its_source() {
    let mut lab = Lab::new(3);
    lab.sync(&three_pods()).unwrap();
    let t = lab.tally(&lab.pod_client, Proto::Tcp, "10.96.0.10:80", 30);
    assert_eq!(answered(&t), 30);
    assert_eq!(sources(&t), [POD_CLIENT_IP.to_string()].into_iter().collect());
}

#[test]
fn masquerade_all_masquerades_pod_traffic_too() {
    let mut lab = Lab::new(1);
    lab.ctx.masquerade_all = true;
    lab.sync(&web(&[(&pod_ip(1), "node-b")])).unwrap();
    let t = lab.tally(&lab.pod_client, Proto::Udp, "10.96.0.10:53", 10);
    assert_eq!(answered(&t), 10);
    assert_eq!(sources(&t), [pod_gw(1)].into_iter().collect());
}

#[test]
fn node_port_from_outside_the_node_is_served_and_masqueraded() {
    let mut lab = Lab::new(2);
    let m = service(
        "np",
        "10.96.0.20",
        "{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, targetPort: 8080, nodePort: 30053}",
        "type: NodePort",
    ) + &slice("np", "np-1", "IPv4", SLICE_PORTS, &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), NODE)]);
    lab.sync(&m).unwrap();
    for (proto, port) in [(Proto::Tcp, 30080), (Proto::Udp, 30053)] {
        let t = lab.tally(&lab.client, proto, &format!("{NODE_IP}:{port}"), 60);
        assert_eq!(answered(&t), 60, "{proto:?}: {t:?}");
        assert_eq!(t.by_responder().len(), 2);
        assert!(!t.seen_sources().contains(&ip(CLIENT_IP)), "node port traffic is masqueraded");
    }
    // Only the node's own address takes node ports (--nodeport-addresses primary).
    let t = lab.tally(&lab.client, Proto::Tcp, "10.0.1.99:30080", 1);
    assert_eq!(answered(&t), 0);
}

#[test]
fn service_without_endpoints_and_unused_cluster_ip_ports_are_rejected() {
    let mut lab = Lab::new(1);
    let m = web(&[(&pod_ip(1), "node-b")]) + &service("empty", "10.96.0.30", HTTP_DNS, "");
    lab.sync(&m).unwrap();
    for (proto, to) in [
        (Proto::Tcp, "10.96.0.30:80"),
        (Proto::Udp, "10.96.0.30:53"),
        // kube-proxy nftables mode: a ClusterIP on a port it does not serve is rejected.
        (Proto::Tcp, "10.96.0.10:81"),
        (Proto::Udp, "10.96.0.10:54"),
    ] {
        let t = lab.tally(&lab.client, proto, to, 2);
        assert_eq!(t.count(|o| *o == Outcome::Refused), 2, "{proto:?} {to}: {t:?}");
    }
}

fn load_balancer(name: &str, cip: &str, lb: &str, eps: &[(&str, &str)]) -> String {
    let eps: Vec<_> = eps.iter().map(|(ip, node)| ep(ip, node)).collect();
    let mut s = service(
        name,
        cip,
        "{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}",
        "type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000",
    );
    s.push_str(&format!("status: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n"));
    s + &slice(name, &format!("{name}-1"), "IPv4", "{name: http, port: 8080, protocol: TCP}", &eps)
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip_and_uses_local_endpoints() {
    let mut lab = Lab::new(2);
    lab.sync(&load_balancer("lb", "10.96.0.40", "203.0.113.10", &[(&pod_ip(1), NODE), (&pod_ip(2), "node-b")]))
        .unwrap();
    for to in ["203.0.113.10:80", "10.0.1.1:30081"] {
        let t = lab.tally(&lab.client, Proto::Tcp, to, 40);
        assert_eq!(answered(&t), 40, "{to}: {t:?}");
        assert_eq!(t.by_responder().keys().cloned().collect::<Vec<_>>(), ["ep1"], "{to}: only the local endpoint");
        assert_eq!(sources(&t), [CLIENT_IP.to_string()].into_iter().collect(), "{to}: client IP preserved");
    }
    // Pod traffic to the LB IP is short-circuited to every endpoint, unmasqueraded.
    let t = lab.tally(&lab.pod_client, Proto::Tcp, "203.0.113.10:80", 60);
    assert_eq!(answered(&t), 60);
    assert_eq!(t.by_responder().len(), 2, "{t:?}");
    assert_eq!(sources(&t), [POD_CLIENT_IP.to_string()].into_iter().collect());
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_external_traffic() {
    let mut lab = Lab::new(1);
    lab.sync(&load_balancer("lb", "10.96.0.40", "203.0.113.10", &[(&pod_ip(1), "node-b")])).unwrap();
    let t = lab.tally(&lab.client, Proto::Tcp, "203.0.113.10:80", 2);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 2, "dropped, not rejected: {t:?}");
    let t = lab.tally(&lab.client, Proto::Tcp, "10.0.1.1:30081", 2);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 2, "node port dropped too: {t:?}");
    // The ClusterIP and pod traffic to the LB IP still work.
    assert_eq!(answered(&lab.tally(&lab.client, Proto::Tcp, "10.96.0.40:80", 5)), 5);
    assert_eq!(answered(&lab.tally(&lab.pod_client, Proto::Tcp, "203.0.113.10:80", 5)), 5);
}

#[test]
fn external_ip_with_cluster_policy_is_served_and_masqueraded() {
    let mut lab = Lab::new(2);
    let m = service("ext", "10.96.0.50", HTTP_DNS, "externalIPs: [198.51.100.7]")
        + &slice("ext", "ext-1", "IPv4", SLICE_PORTS, &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), NODE)]);
    lab.sync(&m).unwrap();
    let t = lab.tally(&lab.client, Proto::Udp, "198.51.100.7:53", 40);
    assert_eq!(answered(&t), 40);
    assert_eq!(t.by_responder().len(), 2);
    assert_eq!(sources(&t), [pod_gw(1), pod_gw(2)].into_iter().collect());
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    let mut lab = Lab::new(2);
    let m = service("itp", "10.96.0.60", HTTP_DNS, "internalTrafficPolicy: Local")
        + &slice("itp", "itp-1", "IPv4", SLICE_PORTS, &[ep(&pod_ip(1), "node-b")]);
    lab.sync(&m).unwrap();
    let t = lab.tally(&lab.pod_client, Proto::Tcp, "10.96.0.60:80", 2);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 2, "{t:?}");
    // With a local endpoint, only it is used.
    let m = service("itp", "10.96.0.60", HTTP_DNS, "internalTrafficPolicy: Local")
        + &slice("itp", "itp-1", "IPv4", SLICE_PORTS, &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), NODE)]);
    lab.sync(&m).unwrap();
    let t = lab.tally(&lab.pod_client, Proto::Tcp, "10.96.0.60:80", 20);
    assert_eq!(t.by_responder().keys().cloned().collect::<Vec<_>>(), ["ep2"]);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded() {
    let mut lab = Lab::new(1);
    lab.sync(&web(&[(&pod_ip(1), NODE)])).unwrap();
    let t = lab.tally(&lab.pods[0], Proto::Tcp, "10.96.0.10:80", 5);
    assert_eq!(answered(&t), 5, "{t:?}");
    // Without masquerade the pod would answer itself directly and the connection would fail.
    assert_eq!(sources(&t), [pod_gw(1)].into_iter().collect());
}

#[test]
fn ipv6_cluster_ip_spreads_over_ipv6_endpoints() {
    let mut lab = Lab::new(3);
    let eps: Vec<String> = (1..=3).map(pod_ip6).collect();
    let m =
        service("web6", "10.96.0.70", HTTP_DNS, "clusterIPs: [10.96.0.70, 'fd00:96::70'], ipFamilies: [IPv4, IPv6]")
            + &slice(
                "web6",
                "web6-v6",
                "IPv6",
                SLICE_PORTS,
                &[ep(&eps[0], "node-b"), ep(&eps[1], "node-b"), ep(&eps[2], NODE)],
            );
    lab.sync(&m).unwrap();
    for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
        let t = lab.tally(&lab.client, proto, &format!("[fd00:96::70]:{port}"), 90);
        assert_eq!(answered(&t), 90, "{proto:?}: {t:?}");
        assert_eq!(t.by_responder().len(), 3);
        assert!(!t.seen_sources().contains(&ip("fd00:1::2")), "off-cluster IPv6 client is masqueraded");
    }
    // No IPv4 endpoints: the IPv4 ClusterIP rejects.
    let t = lab.tally(&lab.client, Proto::Tcp, "10.96.0.70:80", 1);
    assert_eq!(t.count(|o| *o == Outcome::Refused), 1);
}

#[test]
fn our_bytecode_decompiles_and_reloads_to_the_same_listing() {
    let mut lab = Lab::new(2);
    let m = three_pods()
        + &load_balancer("lb", "10.96.0.40", "203.0.113.10", &[(&pod_ip(1), NODE), (&pod_ip(2), "node-b")])
        + &service("empty", "10.96.0.30", HTTP_DNS, "")
        + &affinity_web(10800);
    lab.sync(&m).unwrap();
    let listing = lab.ruleset();
    assert!(listing.contains("update @affinity-"), "{listing}");
    assert!(listing.contains("numgen random mod 3 map @backends"), "{listing}");
    let fresh = lab.topo.netns("fresh");
    let file = std::env::temp_dir().join(format!("{}-listing.nft", fresh.name));
    std::fs::write(&file, &listing).unwrap();
    fresh.exec("nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(fresh.exec("nft", &["list", "ruleset"]), listing);
}

#[test]
fn changing_one_endpoint_among_a_thousand_services_is_a_handful_of_messages() {
    let mut lab = Lab::new(4);
    let mut m = String::new();
    for i in 0..1000 {
        let cip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        m += &service(&format!("s{i}"), &cip, HTTP_DNS, "");
        m += &slice(
            &format!("s{i}"),
            &format!("s{i}-1"),
            "IPv4",
            SLICE_PORTS,
            &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), "node-b")],
        );
    }
    let base = m.clone() + &three_pods();
    let cold = lab.sync(&base).unwrap();
    assert!(cold.messages > 100, "{cold:?}");

    // An established connection to another service must survive the change.
    let mut conn = lab
        .client
        .run(|| TcpStream::connect_timeout(&"10.97.0.1:80".parse().unwrap(), Duration::from_secs(2)).unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    conn.write_all(b"one\n").unwrap();
    reader.read_line(&mut line).unwrap();
    let first = line.split_whitespace().next().unwrap().to_string();

    // web: ep3 replaced by ep4: one endpoint changes.
    let changed = m + &web(&[(&pod_ip(1), "node-b"), (&pod_ip(2), "node-c"), (&pod_ip(4), NODE)]);
    let inc = lab.sync(&changed).unwrap();
    assert!(inc.full.is_empty());
    assert!(inc.messages <= 6, "one endpoint change took {} messages: {inc:?}", inc.messages);

    line.clear();
    conn.write_all(b"two\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.split_whitespace().next(), Some(first.as_str()), "the established connection survived");

    let t = lab.tally(&lab.client, Proto::Tcp, "10.96.0.10:80", 60);
    assert_eq!(t.by_responder().keys().cloned().collect::<Vec<_>>(), ["ep1", "ep2", "ep4"]);

    // An unchanged sync sends nothing.
    let same = lab.sync(&changed).unwrap();
    assert_eq!(same.messages, 0);
}

#[test]
fn a_batch_the_kernel_rejects_leaves_the_previous_ruleset_and_reports_why() {
    let mut lab = Lab::new(1);
    lab.sync(&web(&[(&pod_ip(1), "node-b")])).unwrap();
    let before = lab.ruleset();

    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("test", &web(&[(&pod_ip(1), "node-b")]));
    l.add_text("test", &service("other", "10.96.0.99", HTTP_DNS, ""));
    let mut bad = nftproxy_nftables::desired(&l.state, &lab.ctx);
    bad[0].element(
        "service-ips",
        nftproxy_nftables::ruleset::Key::of(&[
            nftproxy_nftables::ruleset::Field::Addr(ip("10.96.0.98")),
            nftproxy_nftables::ruleset::Field::Proto(6),
            nftproxy_nftables::ruleset::Field::Port(80),
        ]),
        nftproxy_nftables::ruleset::Value::Verdict(nftproxy_nft_wire::Verdict::Goto("no-such-chain".into())),
        Some(&std::sync::Arc::new("test/broken:http".to_string())),
    );
    let err = lab.backend.sync(bad).unwrap_err().to_string();
    assert!(err.contains("add elements") && err.contains("service-ips"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(lab.ruleset(), before, "the rejected transaction changed nothing");
    assert_eq!(answered(&lab.tally(&lab.client, Proto::Tcp, "10.96.0.10:80", 3)), 3);
    // After a failure the next sync is a full one, and succeeds.
    let ok = lab.sync(&web(&[(&pod_ip(1), "node-b")])).unwrap();
    assert_eq!(ok.full.len(), 1, "{ok:?}");
}

#[test]
fn cleanup_removes_exactly_our_tables() {
    let mut lab = Lab::new(1);
    lab.sync(&web(&[(&pod_ip(1), "node-b")])).unwrap();
    lab.node.exec("nft", &["add table ip other; add chain ip other c"]);
    lab.node.exec("nft", &["add table inet kube-proxy"]);
    lab.backend.cleanup().unwrap();
    let tables = lab.node.exec("nft", &["list", "tables"]);
    assert_eq!(tables, "table ip other\ntable inet kube-proxy\n");
    // A second cleanup finds nothing to do.
    lab.backend.cleanup().unwrap();
}

fn affinity_web(timeout: u32) -> String {
    let eps: Vec<_> = (1..=3).map(|n| (pod_ip(n), if n == 3 { NODE } else { "node-b" })).collect();
    let eps: Vec<_> = eps.iter().map(|(ip, node)| ep(ip, node)).collect();
    service(
        "sticky",
        "10.96.0.80",
        "{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}",
        &format!(
            "type: NodePort, sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}"
        ),
    ) + &slice("sticky", "sticky-1", "IPv4", "{name: http, port: 8080, protocol: TCP}", &eps)
}

/// The one endpoint that answers 10 connections of the lab's client to the sticky Service.
fn pinned(lab: &Lab) -> String {
    let t = lab.tally(&lab.client, Proto::Tcp, "10.96.0.80:80", 10);
    assert_eq!(answered(&t), 10, "{t:?}");
    assert_eq!(t.by_responder().len(), 1, "one endpoint for one client: {t:?}");
    t.by_responder().into_keys().next().unwrap()
}

#[test]
fn client_ip_affinity_pins_a_client_until_the_timeout() {
    let mut lab = Lab::new(3);
    lab.sync(&affinity_web(2)).unwrap();
    for to in ["10.96.0.80:80", "10.0.1.1:30090"] {
        let t = lab.tally(&lab.client, Proto::Tcp, to, 30);
        assert_eq!(answered(&t), 30, "{to}: {t:?}");
        assert_eq!(t.by_responder().len(), 1, "{to}: one endpoint for one client: {t:?}");
    }
    let listing = lab.ruleset();
    assert!(listing.contains("flags dynamic,timeout") && listing.contains("10.0.1.2 expires"), "{listing}");
    // After the timeout the client is free again: over several expiries it meets another endpoint.
    let first = lab.tally(&lab.client, Proto::Tcp, "10.96.0.80:80", 1).by_responder().into_keys().next().unwrap();
    let mut seen = BTreeSet::from([first]);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(2600));
        let t = lab.tally(&lab.client, Proto::Tcp, "10.96.0.80:80", 5);
        assert_eq!(t.by_responder().len(), 1, "pinned again after a new choice: {t:?}");
        seen.extend(t.by_responder().into_keys());
        if seen.len() > 1 {
            break;
        }
    }
    assert!(seen.len() > 1, "the affinity never expired: {seen:?}");
}

/// kube-proxy adds its affinity sets again, unflushed, on every sync and at start, so a client
/// keeps its endpoint when the proxy restarts or resyncs everything. So do we: a rebuild in place
/// keeps the sets packets fill when we declare them the same.
#[test]
fn client_ip_affinity_survives_a_full_sync_and_a_restart() {
    let mut lab = Lab::new(3);
    let m = affinity_web(600);
    lab.sync(&m).unwrap();
    let first = pinned(&lab);
    let remembered = |lab: &Lab, when: &str| {
        let listing = lab.ruleset();
        assert!(listing.contains("elements = { 10.0.1.2 expires"), "{when}: the client is remembered\n{listing}");
    };
    remembered(&lab, "after the first connections");
    lab.backend.force_full_sync();
    assert_eq!(lab.sync(&m).unwrap().full.len(), 2);
    remembered(&lab, "after a full sync, before any new connection");
    assert_eq!(pinned(&lab), first, "after a full sync");
    // A new process, knowing nothing, adopts the table.
    lab.backend = lab.node.run(|| nftproxy_nftables::NftablesBackend::new().unwrap());
    let r = lab.sync(&m).unwrap();
    assert_eq!((r.full.len(), r.transactions), (2, 2), "one rebuild in place per family: {r:?}");
    remembered(&lab, "after a restart, before any new connection");
    assert_eq!(pinned(&lab), first, "after a restart");
}

/// kube-proxy names an endpoint's affinity set without the timeout and adds it again with a new
/// one (`tx.Add`), which the kernel (6.10 and later) takes as an update of the timeout: the
/// clients stay. Ours too, on an incremental sync and on a restart's rebuild in place; and a
/// client's next connection is remembered for the new timeout.
#[test]
fn client_ip_affinity_keeps_its_clients_when_the_timeout_changes() {
    let mut lab = Lab::new(3);
    lab.sync(&affinity_web(600)).unwrap();
    let first = pinned(&lab);
    // Every set has the timeout `shown` (nft's way of writing it) and the client is remembered.
    let remembered = |lab: &Lab, shown: &str, when: &str| {
        let listing = lab.ruleset();
        let timeouts: Vec<&str> = listing.lines().filter_map(|l| l.trim().strip_prefix("timeout ")).collect();
        assert_eq!(timeouts, [shown; 3], "{when}: one set per endpoint\n{listing}");
        // (An element keeps the timeout it was added with: `10.0.1.2 timeout 10m expires …`.)
        assert!(listing.contains("elements = { 10.0.1.2 "), "{when}: the client is remembered\n{listing}");
    };
    remembered(&lab, "10m", "at first");
    let r = lab.sync(&affinity_web(3600)).unwrap();
    assert!(r.full.is_empty(), "an incremental sync: {r:?}");
    remembered(&lab, "1h", "after an incremental sync, before any new connection");
    assert_eq!(pinned(&lab), first, "after an incremental sync");
    lab.backend = lab.node.run(|| nftproxy_nftables::NftablesBackend::new().unwrap());
    let r = lab.sync(&affinity_web(2)).unwrap();
    assert_eq!(r.full.len(), 2, "a rebuild in place per family: {r:?}");
    remembered(&lab, "2s", "after a restart, before any new connection");
    assert_eq!(pinned(&lab), first, "after a restart");
    // The connections just made refreshed the client for the new timeout, 2 s.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let listing = lab.ruleset();
    assert!(!listing.contains("elements = { 10.0.1.2 "), "forgotten 2 s after its last connection\n{listing}");
}

#[test]
fn load_balancer_source_ranges_drop_other_sources_before_dnat() {
    let mut lab = Lab::new(1);
    let with_ranges = |ranges: &str| {
        load_balancer("fw", "10.96.0.90", "203.0.113.20", &[(&pod_ip(1), NODE)]).replace(
            "externalTrafficPolicy: Local",
            &format!("externalTrafficPolicy: Cluster, loadBalancerSourceRanges: [{ranges}]"),
        )
    };
    lab.sync(&with_ranges("'10.0.1.0/30'")).unwrap();
    assert_eq!(answered(&lab.tally(&lab.client, Proto::Tcp, "203.0.113.20:80", 5)), 5, "client inside the range");
    let t = lab.tally(&lab.pod_client, Proto::Tcp, "203.0.113.20:80", 2);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 2, "pod outside the range is dropped: {t:?}");
    // Neither the ClusterIP nor the node port is subject to source ranges.
    assert_eq!(answered(&lab.tally(&lab.pod_client, Proto::Tcp, "10.96.0.90:80", 3)), 3);
    assert_eq!(answered(&lab.tally(&lab.pod_client, Proto::Tcp, "10.0.1.1:30081", 3)), 3);
    lab.sync(&with_ranges("'192.0.2.0/24', ' 10.244.50.0/24 '")).unwrap();
    assert_eq!(answered(&lab.tally(&lab.pod_client, Proto::Tcp, "203.0.113.20:80", 3)), 3);
    let t = lab.tally(&lab.client, Proto::Tcp, "203.0.113.20:80", 2);
    assert_eq!(t.count(|o| *o == Outcome::Timeout), 2, "{t:?}");
}

fn many(n: usize) -> String {
    let mut m = three_pods();
    for i in 0..n {
        m += &service(&format!("m{i}"), &format!("10.98.{}.{}", i / 250, i % 250 + 1), HTTP_DNS, "");
        m += &slice(
            &format!("m{i}"),
            &format!("m{i}-1"),
            "IPv4",
            SLICE_PORTS,
            &[ep(&pod_ip(1), "node-b"), ep(&pod_ip(2), "node-b")],
        );
    }
    m
}

/// A listing as what it holds: each table's sets, maps and chains in name order and each set's
/// elements sorted. The kernel lists chains and sets in the order they were created and
/// elements in hash order; a cold start creates a pick chain with the first Service that uses
/// it, an atomic replace creates them all at once.
fn canonical(listing: &str) -> String {
    let sorted_elements = |block: String| -> String {
        let Some(start) = block.find("elements = {") else { return block };
        let inner_start = start + "elements = {".len();
        let end = inner_start + block[inner_start..].find('}').expect("an element list ends");
        let mut items: Vec<&str> = block[inner_start..end].split(',').map(str::trim).collect();
        items.sort_unstable();
        format!("{}elements = {{ {} }}{}", &block[..start], items.join(", "), &block[end + 1..])
    };
    let mut out = String::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut open: Option<String> = None;
    for line in listing.lines() {
        if let Some(block) = open.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line == "\t}" {
                blocks.push(sorted_elements(open.take().expect("open")));
            }
        } else if line.starts_with('\t') && !line.starts_with("\t\t") && line.ends_with(" {") {
            open = Some(format!("{line}\n"));
        } else if line == "}" {
            blocks.sort();
            out.extend(blocks.drain(..));
            out.push_str("}\n");
        } else if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn a_cold_start_in_chunks_ends_where_one_transaction_would() {
    let mut lab = Lab::new(3);
    lab.backend.cold_start_max_elements = 500;
    let m = many(400);
    let chunked = lab.sync(&m).unwrap();
    assert!(chunked.transactions > 5, "{chunked:?}");
    let listing = lab.ruleset();
    let held = canonical(&listing);
    assert!(held.matches("\tchain ").count() >= 20 && held.contains("10.98.1.150 . tcp . 80"), "{held}");
    lab.backend.force_full_sync();
    let whole = lab.sync(&m).unwrap();
    assert_eq!(whole.full.len(), 2);
    assert_eq!(
        canonical(&lab.ruleset()),
        canonical(&listing),
        "chunked cold start and atomic replace program the same table"
    );
    assert_eq!(answered(&lab.tally(&lab.client, Proto::Tcp, "10.98.1.150:80", 10)), 10);
}

#[test]
fn a_restarted_proxy_replaces_the_table_without_a_failed_connection() {
    let mut lab = Lab::new(3);
    let m = many(300);
    lab.sync(&m).unwrap();
    // Traffic flows while a new process (a new backend, knowing nothing) adopts the table.
    let client = lab.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut t = Tally::default();
        let start = std::time::Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
            let one = nftproxy_integration::tally(
                &client,
                Proto::Udp,
                "10.96.0.10:53".parse().unwrap(),
                None,
                20,
                Duration::from_secs(1),
            );
            for (o, n) in one.outcomes {
                *t.outcomes.entry(o).or_default() += n;
            }
        }
        t
    });
    std::thread::sleep(Duration::from_millis(200));
    let hooked = base_chain_handles(&lab);
    assert_eq!(hooked.len(), 2 * 8, "our base chains, both families: {hooked:?}");
    for _ in 0..5 {
        let mut fresh = lab.node.run(|| nftproxy_nftables::NftablesBackend::new().unwrap());
        let mut l = nftproxy_manifest::Loaded::default();
        l.add_text("test", &m);
        let r = fresh.sync(nftproxy_nftables::desired(&l.state, &lab.ctx)).unwrap();
        assert_eq!(r.full.len(), 2);
        assert_eq!(r.transactions, 2, "one atomic replace per family: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let t = traffic.join().unwrap();
    assert!(t.total() > 50, "{t:?}");
    assert_eq!(answered(&t), t.total(), "a request failed during adoption: {t:?}");
    // The base chains were flushed and refilled, never deleted and added again: a chain added
    // again is hooked anew at the commit, and a packet between the new hook and the old one
    // went un-NATed (seen: one refused connection in a take-over under traffic).
    assert_eq!(base_chain_handles(&lab), hooked, "base chains kept across the adoptions");
}

/// (family, base chain) → its kernel handle, as `nft -a` lists our tables.
fn base_chain_handles(lab: &Lab) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for family in ["ip", "ip6"] {
        let listing = lab.node.exec("nft", &["-a", "list", "table", family, nftproxy_nftables::TABLE]);
        let mut lines = listing.lines().peekable();
        while let Some(line) = lines.next() {
            // `chain nat-prerouting { # handle 3` then `type nat hook prerouting priority ...`
            let Some((name, handle)) = line.trim().strip_prefix("chain ").and_then(|l| l.split_once(" { # handle "))
            else {
                continue;
            };
            if lines.peek().is_some_and(|next| next.contains(" hook ")) {
                out.insert((family.to_string(), name.to_string()), handle.trim().parse().expect("a handle"));
            }
        }
    }
    out
}

/// One UDP request from a fixed source port, as a resolver reusing its socket would send.
fn udp_from_port(lab: &Lab, to: &str, port: u16) -> String {
    lab.client.run(|| {
        // The same source port each time; a bind racing the previous socket's release is retried.
        let s = (0..20)
            .find_map(|_| {
                std::net::UdpSocket::bind(("0.0.0.0", port)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .unwrap_or_else(|| panic!("UDP port {port} stays in use in the client namespace"));
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send(b"who\n").unwrap();
        let mut buf = [0u8; 128];
        match s.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).split_whitespace().next().unwrap_or("").to_string(),
            Err(e) => format!("error: {e}"),
        }
    })
}

#[test]
fn udp_conntrack_entries_to_a_removed_endpoint_are_deleted() {
    let mut lab = Lab::new(2);
    lab.sync(&web(&[(&pod_ip(1), "node-b"), (&pod_ip(2), "node-b")])).unwrap();
    let first = udp_from_port(&lab, "10.96.0.10:53", 40000);
    assert!(first == "ep1" || first == "ep2", "{first}");
    for _ in 0..5 {
        assert_eq!(udp_from_port(&lab, "10.96.0.10:53", 40000), first, "conntrack pins the flow");
    }
    let (gone, stays) = if first == "ep1" { (1, 2) } else { (2, 1) };
    let r = lab.sync(&web(&[(&pod_ip(stays), "node-b")])).unwrap();
    assert!(r.conntrack_deleted >= 1, "{r:?}");
    // The removed pod still answers in this lab: only the deleted entry sends the flow elsewhere.
    assert_eq!(udp_from_port(&lab, "10.96.0.10:53", 40000), format!("ep{stays}"), "ep{gone} was removed");
    // Nothing was removed this time: no dump.
    let r = lab.sync(&web(&[(&pod_ip(stays), "node-b"), (&pod_ip(gone), "node-b")])).unwrap();
    assert_eq!(r.conntrack_deleted, 0);
}

/// kube-proxy's reconciler (1.32+) keeps UDP flows to *serving* endpoints, whatever the traffic
/// policy or termination: a flow pinned to an endpoint that starts terminating (still serving)
/// keeps going to it; once the endpoint is gone, a restarted proxy's first sync deletes the
/// entry (the reconciler runs on every sync that touches a UDP Service, the first one included).
#[test]
fn udp_flows_to_serving_terminating_endpoints_survive_and_a_restart_cleans_stale_ones() {
    use nftproxy_integration::yaml::{Ep, ep, service, slice};
    let mut lab = Lab::new(2);
    let m = |eps: &[Ep]| service("web", "10.96.0.10", HTTP_DNS, "") + &slice("web", "web-1", "IPv4", SLICE_PORTS, eps);
    let (p1, p2) = (pod_ip(1), pod_ip(2));
    lab.sync(&m(&[ep(&p1, "node-b"), ep(&p2, "node-b")])).unwrap();
    let first = udp_from_port(&lab, "10.96.0.10:53", 40100);
    let (pinned, other) = if first == "ep1" { (&p1, &p2) } else { (&p2, &p1) };
    let terminating = Ep { ip: pinned, node: "node-b", ready: false, terminating: true };
    let r = lab.sync(&m(&[terminating, ep(other, "node-b")])).unwrap();
    assert_eq!(r.conntrack_deleted, 0, "a serving-terminating endpoint's flows stay: {r:?}");
    for _ in 0..3 {
        assert_eq!(udp_from_port(&lab, "10.96.0.10:53", 40100), first, "the live flow is not cut");
    }
    // New flows no longer go to it (a ready endpoint exists).
    let t = lab.tally(&lab.client, Proto::Udp, "10.96.0.10:53", 20);
    assert_eq!(t.by_responder().len(), 1, "{t:?}");
    // "Restart": a new backend whose first sync no longer has the endpoint at all.
    lab.backend = lab.node.run(|| nftproxy_nftables::NftablesBackend::new().unwrap());
    let r = lab.sync(&m(&[ep(other, "node-b")])).unwrap();
    assert!(r.conntrack_deleted >= 1, "the first sync after a restart cleans up: {r:?}");
    assert_ne!(udp_from_port(&lab, "10.96.0.10:53", 40100), first, "the stale flow was deleted");
}

/// The same reconciler after kube-proxy's iptables rules (the daemon runs it in both modes).
#[test]
fn udp_conntrack_reconciler_cleans_up_after_iptables_mode_too() {
    let lab = Lab::new(2);
    lab.sync_iptables(&web(&[(&pod_ip(1), "node-b"), (&pod_ip(2), "node-b")])).unwrap();
    let first = udp_from_port(&lab, "10.96.0.10:53", 40200);
    let stays = if first == "ep1" { 2 } else { 1 };
    let m = web(&[(&pod_ip(stays), "node-b")]);
    lab.sync_iptables(&m).unwrap();
    assert_eq!(udp_from_port(&lab, "10.96.0.10:53", 40200), first, "conntrack still pins the flow");
    let mut l = nftproxy_manifest::Loaded::default();
    l.add_text("t", &m);
    let deleted = lab.node.run(|| {
        let mut sock = nftproxy_nftables::netlink::NftSocket::open().unwrap();
        nftproxy_nftables::conntrack::reconcile(&mut sock, &l.state)
    });
    assert_eq!(deleted.error, None);
    assert!(deleted.deleted >= 1);
    assert_eq!(udp_from_port(&lab, "10.96.0.10:53", 40200), format!("ep{stays}"));
}

#[test]
fn sctp_cluster_ip_is_spread_and_masqueraded_as_crafted_packets_show() {
    use nftproxy_integration::sctp::{SctpSeen, send_inits};
    let mut lab = Lab::new(3);
    let eps: Vec<_> = (1..=3).map(pod_ip).collect();
    let m = service("sctp", "10.96.0.95", "{name: s, port: 80, protocol: SCTP, targetPort: 8080}", "")
        + &slice(
            "sctp",
            "sctp-1",
            "IPv4",
            "{name: s, port: 8080, protocol: SCTP}",
            &[ep(&eps[0], "node-b"), ep(&eps[1], "node-b"), ep(&eps[2], NODE)],
        );
    lab.sync(&m).unwrap();
    let pods = lab.pods.clone();
    let sniffers: Vec<_> =
        pods.iter().enumerate().map(|(i, ns)| lab.topo.sctp_sniffer(ns, &format!("ep{}", i + 1))).collect();
    send_inits(&lab.client, "10.96.0.95:80".parse().unwrap(), 30000..30060);
    std::thread::sleep(Duration::from_millis(300));
    let seen: Vec<SctpSeen> = sniffers.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
    assert_eq!(seen.len(), 60, "{seen:?}");
    for (i, s) in sniffers.iter().enumerate() {
        let s = s.lock().unwrap();
        assert!(!s.is_empty(), "ep{} got nothing", i + 1);
        for p in s.iter() {
            assert_eq!((p.dst, p.dport), (ip(&pod_ip(i + 1)), 8080), "DNATed to the endpoint");
            assert_eq!(p.src, ip(&pod_gw(i + 1)), "masqueraded: the client is off-cluster");
        }
    }
}

#[test]
fn partial_syncs_of_changed_services_end_where_a_full_sync_would() {
    use std::collections::BTreeSet;
    let mut lab = Lab::new(3);
    let load = |m: &str| {
        let mut l = nftproxy_manifest::Loaded::default();
        l.add_text("test", m);
        l.state
    };
    let base = many(50) + &affinity_web(60) + &load_balancer("lb", "10.96.0.40", "203.0.113.10", &[(&pod_ip(1), NODE)]);
    lab.backend.sync_cluster(&load(&base), &lab.ctx).unwrap();
    // Change three services: web loses an endpoint, m7 is removed, sticky's timeout changes; m3
    // is named but unchanged.
    let changed_text = base
        .replace(&three_pods(), &web(&[(&pod_ip(1), "node-b"), (&pod_ip(3), NODE)]))
        .replace(&service("m7", "10.98.0.8", HTTP_DNS, ""), "")
        .replace("timeoutSeconds: 60", "timeoutSeconds: 120");
    assert_ne!(changed_text, base);
    let state = load(&changed_text);
    let changed: BTreeSet<_> =
        ["m3", "m7", "sticky", "web"].iter().map(|n| nftproxy_model::ServiceName::new("test", *n)).collect();
    let r = lab.backend.sync_services(&state, &lab.ctx, &changed).unwrap();
    assert!(r.full.is_empty(), "{r:?}");
    let partial = lab.ruleset();
    lab.backend.force_full_sync();
    lab.backend.sync_cluster(&state, &lab.ctx).unwrap();
    // The kernel lists elements in its own order, which depends on insertion history: compare
    // lines, sorted.
    let strip = |s: &str| {
        let mut v: Vec<String> = s
            .lines()
            .filter(|l| !l.contains("expires"))
            .map(|l| {
                l.trim().trim_end_matches(',').trim_start_matches("elements = { ").trim_end_matches(" }").to_string()
            })
            .collect();
        v.sort();
        v
    };
    let (p, f) = (strip(&partial), strip(&lab.ruleset()));
    let only_p: Vec<_> = p.iter().filter(|l| !f.contains(l)).collect();
    let only_f: Vec<_> = f.iter().filter(|l| !p.contains(l)).collect();
    assert!(only_p.is_empty() && only_f.is_empty() && p == f, "partial only: {only_p:#?}\nfull only: {only_f:#?}");
    assert_eq!(answered(&lab.tally(&lab.client, Proto::Tcp, "10.96.0.80:80", 5)), 5);
}

/// Drift inside a large map, where elements are audited by key instead of counted: someone else
/// replaces one element with other data in one transaction (the count stays the same) and deletes
/// another; the rolling audit finds each within size/window deep checks, a structural check alone
/// never marks the generation as seen, and the full sync that follows repairs it.
#[test]
fn drift_in_a_large_map_is_found_by_the_rolling_element_audit() {
    use nftproxy_nft_wire::Batch;
    use nftproxy_nftables::drift::{AUDIT_WINDOW, COUNTED_SET_MAX};
    use nftproxy_nftables::{Family, TABLE};

    let mut lab = Lab::new(1);
    let state = nftproxy_integration::bench::synthetic(3000, 1);
    lab.backend.sync_cluster(&state, &lab.ctx).unwrap();
    let (set, elems) = {
        let table = lab.backend.programmed(Family::V4).unwrap();
        let (name, elements) = table
            .elements
            .iter()
            .filter(|(n, e)| {
                let flags = table.sets[*n].spec.flags;
                e.len() > COUNTED_SET_MAX
                    && flags & nftproxy_nft_wire::consts::NFT_SET_MAP != 0
                    && flags & nftproxy_nft_wire::consts::NFT_SET_INTERVAL == 0
            })
            .max_by_key(|(_, e)| e.len())
            .expect("a map larger than the counted size");
        (name.clone(), elements.iter().map(|(k, v)| v.wire(k)).collect::<Vec<_>>())
    };
    let rounds = elems.len().div_ceil(AUDIT_WINDOW);
    eprintln!("{set}: {} elements, {rounds} windows", elems.len());

    let foreign = |lab: &Lab, edit: &(dyn Fn(&mut Batch) + Sync)| {
        lab.node.run(|| {
            let mut sock = nftproxy_nftables::netlink::NftSocket::open().unwrap();
            let mut b = Batch::new(1);
            edit(&mut b);
            sock.commit(&b.finish()).unwrap();
        })
    };
    // Finds the drift within one deep check and `rounds` audit steps; returns the steps taken.
    let find = |lab: &mut Lab| -> (usize, String) {
        assert_eq!(lab.backend.verify(false).unwrap(), None, "the structure is intact");
        assert!(!lab.backend.audit_pending(), "a structural check starts no audit");
        let t = std::time::Instant::now();
        let mut found = lab.backend.verify(true).unwrap();
        eprintln!("deep check: {found:?} ({:.1?})", t.elapsed());
        let mut steps = 1;
        while found.is_none() {
            assert!(lab.backend.audit_pending(), "the audit ended without finding it after {steps} steps");
            let t = std::time::Instant::now();
            found = lab.backend.audit_step().unwrap();
            eprintln!("audit step {steps}: {found:?} ({:.1?})", t.elapsed());
            steps += 1;
        }
        assert!(!lab.backend.audit_pending(), "drift found: the audit stops, a full sync follows");
        (steps, found.unwrap())
    };

    // The last element with another one's data, deleted and re-added in one transaction.
    let mut changed = elems.last().unwrap().clone();
    changed.data = elems.iter().map(|e| e.data.clone()).find(|d| *d != changed.data).unwrap();
    foreign(&lab, &|b| {
        b.del_elems(nftproxy_nft_wire::NfFamily::Ip, TABLE, &set, &[changed.clone()]);
        b.add_elems(nftproxy_nft_wire::NfFamily::Ip, TABLE, &set, None, &[changed.clone()]);
    });
    let (checks, diff) = find(&mut lab);
    assert!(diff.starts_with(&format!("set {set}: an element holds")), "{diff}");
    assert!(checks <= rounds, "found after {checks} steps, {rounds} windows");
    lab.backend.sync_cluster(&state, &lab.ctx).unwrap();
    // The repair: a clean audit over every element, after which the generation counts as seen.
    assert_eq!(lab.backend.verify(true).unwrap(), None);
    let mut steps = 1;
    while lab.backend.audit_pending() {
        assert_eq!(lab.backend.audit_step().unwrap(), None, "the full sync repaired it");
        steps += 1;
    }
    assert!(steps <= rounds, "a clean pass takes at most {rounds} steps, took {steps}");
    lab.node.exec("nft", &["add", "table", "inet", "someone-else"]);
    assert_eq!(lab.backend.verify(false).unwrap(), None);
    assert!(!lab.backend.audit_pending());

    // An element in the middle, deleted.
    let gone = elems[elems.len() / 2].clone();
    foreign(&lab, &|b| b.del_elems(nftproxy_nft_wire::NfFamily::Ip, TABLE, &set, &[gone.clone()]));
    let (checks, diff) = find(&mut lab);
    assert_eq!(diff, format!("set {set} lost elements we programmed"));
    assert!(checks <= rounds);
}
