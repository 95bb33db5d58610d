use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;

const NODE: &str = "node-a";

fn ctx() -> NodeContext {
    NodeContext {
        node_name: NODE.into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        zone: Some("zone-a".into()),
        ..Default::default()
    }
}

fn svc(name: &str) -> Service {
    Service {
        name: ServiceName::new("ns", name),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            target_port: TargetPort::Number(8080),
        }],
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity_timeout: None,
        traffic_distribution: None,
    }
}

fn ep(ip: &str, node: &str) -> Endpoint {
    Endpoint {
        address: ip.parse().unwrap(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(node.into()),
        zone: None,
        zone_hints: BTreeSet::new(),
        node_hints: BTreeSet::new(),
    }
}

fn terminating(mut e: Endpoint, serving: bool) -> Endpoint {
    e.ready = false;
    e.serving = serving;
    e.terminating = true;
    e
}

fn zone_hint(mut e: Endpoint, zone: &str) -> Endpoint {
    e.zone_hints.insert(zone.into());
    e
}

fn slice(svc: &str, name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        namespace: "ns".into(),
        name: name.into(),
        service: ServiceName::new("ns", svc),
        address_type: AddressType::IPv4,
        endpoints,
        ports: vec![EndpointPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
        trigger_time: None,
    }
}

fn state(s: Service, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut st = ClusterState::default();
    st.upsert_service(s);
    for sl in slices {
        st.upsert_slice(sl);
    }
    st
}

fn ips(eps: &[ResolvedEndpoint]) -> Vec<String> {
    eps.iter().map(|e| e.to_string()).collect()
}

fn one(st: &ClusterState) -> ResolvedServicePort {
    let mut r = resolve(st, &ctx(), IpFamily::V4);
    assert_eq!(r.len(), 1);
    r.remove(0)
}

#[test]
fn ready_endpoints_are_used() {
    let st = state(svc("web"), vec![slice("web", "web-1", vec![ep("10.0.1.1", "node-b"), ep("10.0.1.2", NODE)])]);
    let r = one(&st);
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert!(r.has_any_endpoints);
    assert_eq!(r.external, None, "a ClusterIP service is not externally accessible");
}

#[test]
fn not_ready_endpoints_are_ignored_when_some_are_ready() {
    let mut not_ready = ep("10.0.1.3", "node-b");
    not_ready.ready = false;
    not_ready.serving = false;
    let st = state(svc("web"), vec![slice("web", "web-1", vec![ep("10.0.1.1", "node-b"), not_ready])]);
    assert_eq!(ips(one(&st).internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn serving_terminating_endpoints_are_used_when_none_is_ready() {
    let st = state(
        svc("web"),
        vec![slice(
            "web",
            "web-1",
            vec![terminating(ep("10.0.1.1", "node-b"), true), terminating(ep("10.0.1.2", "node-b"), false)],
        )],
    );
    let r = one(&st);
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080"], "only serving terminating endpoints");
}

#[test]
fn terminating_endpoints_are_not_used_while_a_ready_one_exists() {
    let st = state(
        svc("web"),
        vec![slice("web", "web-1", vec![terminating(ep("10.0.1.1", "node-b"), true), ep("10.0.1.2", "node-b")])],
    );
    assert_eq!(ips(one(&st).internal.endpoints()), ["10.0.1.2:8080"]);
}

#[test]
fn no_endpoints_rejects() {
    let st = state(svc("web"), vec![]);
    let r = one(&st);
    assert_eq!(r.internal, EndpointChoice::Reject);
    assert!(!r.has_any_endpoints);
}

#[test]
fn non_serving_terminating_endpoints_only_reject() {
    let st = state(svc("web"), vec![slice("web", "web-1", vec![terminating(ep("10.0.1.1", "node-b"), false)])]);
    assert_eq!(one(&st).internal, EndpointChoice::Reject);
}

#[test]
fn slices_of_one_service_are_merged_and_duplicates_counted_once() {
    let mut dup_not_ready = ep("10.0.1.2", "node-b");
    dup_not_ready.ready = false;
    let st = state(
        svc("web"),
        vec![
            slice("web", "web-1", vec![ep("10.0.1.1", "node-b"), dup_not_ready]),
            slice("web", "web-2", vec![ep("10.0.1.2", "node-b"), ep("10.0.1.3", "node-b")]),
            slice("other", "other-1", vec![ep("10.0.9.9", "node-b")]),
        ],
    );
    assert_eq!(ips(one(&st).internal.endpoints()), ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]);
}

#[test]
fn endpoint_ports_are_matched_by_name_and_protocol() {
    let mut s = svc("dns");
    s.ports = vec![
        ServicePort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            node_port: None,
            target_port: TargetPort::Number(53),
        },
        ServicePort {
            name: "dns-tcp".into(),
            protocol: Protocol::Tcp,
            port: 53,
            node_port: None,
            target_port: TargetPort::Name("dns-tcp".into()),
        },
    ];
    let mut sl = slice("dns", "dns-1", vec![ep("10.0.1.1", "node-b")]);
    sl.ports = vec![
        EndpointPort { name: "dns".into(), protocol: Protocol::Udp, port: 5353 },
        EndpointPort { name: "dns-tcp".into(), protocol: Protocol::Tcp, port: 5354 },
        // Same name, wrong protocol: must not be used for the UDP port.
        EndpointPort { name: "dns".into(), protocol: Protocol::Tcp, port: 9999 },
    ];
    let st = state(s, vec![sl]);
    let r = resolve(&st, &ctx(), IpFamily::V4);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].name.to_string(), "ns/dns:dns");
    assert_eq!(ips(r[0].internal.endpoints()), ["10.0.1.1:5353"]);
    assert_eq!(ips(r[1].internal.endpoints()), ["10.0.1.1:5354"]);
}

#[test]
fn zone_hints_apply_when_every_endpoint_has_them_and_one_matches() {
    let st = state(
        svc("web"),
        vec![slice(
            "web",
            "web-1",
            vec![zone_hint(ep("10.0.1.1", "node-b"), "zone-a"), zone_hint(ep("10.0.1.2", "node-c"), "zone-b")],
        )],
    );
    let r = one(&st);
    assert_eq!(r.topology_mode, Some("PreferSameZone"));
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn zone_hints_are_ignored_when_one_endpoint_lacks_them() {
    let st = state(
        svc("web"),
        vec![slice("web", "web-1", vec![zone_hint(ep("10.0.1.1", "node-b"), "zone-a"), ep("10.0.1.2", "node-c")])],
    );
    let r = one(&st);
    assert_eq!(r.topology_mode, None);
    assert_eq!(r.internal.endpoints().len(), 2);
}

#[test]
fn zone_hints_are_ignored_when_none_matches_this_zone() {
    let st = state(
        svc("web"),
        vec![slice(
            "web",
            "web-1",
            vec![zone_hint(ep("10.0.1.1", "node-b"), "zone-b"), zone_hint(ep("10.0.1.2", "node-c"), "zone-c")],
        )],
    );
    assert_eq!(one(&st).internal.endpoints().len(), 2);
}

#[test]
fn node_hints_prefer_same_node() {
    let mut a = ep("10.0.1.1", NODE);
    a.node_hints.insert(NODE.into());
    let mut b = ep("10.0.1.2", "node-b");
    b.node_hints.insert("node-b".into());
    let st = state(svc("web"), vec![slice("web", "web-1", vec![a, b])]);
    let r = one(&st);
    assert_eq!(r.topology_mode, Some("PreferSameNode"));
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn topology_is_ignored_for_terminating_fallback() {
    let st = state(
        svc("web"),
        vec![slice("web", "web-1", vec![terminating(zone_hint(ep("10.0.1.1", "node-b"), "zone-b"), true)])],
    );
    assert_eq!(ips(one(&st).internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let mut s = svc("web");
    s.internal_traffic_policy = TrafficPolicy::Local;
    let st = state(s, vec![slice("web", "web-1", vec![ep("10.0.1.1", "node-b"), ep("10.0.1.2", NODE)])]);
    let r = one(&st);
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.2:8080"]);
    assert!(r.local_endpoints[0].is_local);
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    let mut s = svc("web");
    s.internal_traffic_policy = TrafficPolicy::Local;
    let st = state(s, vec![slice("web", "web-1", vec![ep("10.0.1.1", "node-b")])]);
    let r = one(&st);
    assert_eq!(r.internal, EndpointChoice::Drop);
    assert!(r.has_any_endpoints);
}

fn load_balancer(mut s: Service) -> Service {
    s.service_type = ServiceType::LoadBalancer;
    s.ports[0].node_port = Some(30080);
    s.load_balancer_ips = vec!["203.0.113.10".parse().unwrap()];
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(32000);
    s
}

#[test]
fn external_traffic_policy_local_uses_only_local_endpoints_externally() {
    let st = state(
        load_balancer(svc("lb")),
        vec![slice("lb", "lb-1", vec![ep("10.0.1.1", "node-b"), ep("10.0.1.2", NODE)])],
    );
    let r = one(&st);
    assert!(r.external_policy_local);
    assert_eq!(ips(r.external.as_ref().unwrap().endpoints()), ["10.0.1.2:8080"]);
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080", "10.0.1.2:8080"], "ClusterIP still uses all");
    assert_eq!(r.health_check_node_port, Some(32000));
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_externally() {
    let st = state(load_balancer(svc("lb")), vec![slice("lb", "lb-1", vec![ep("10.0.1.1", "node-b")])]);
    let r = one(&st);
    assert_eq!(r.external, Some(EndpointChoice::Drop));
    assert_eq!(ips(r.internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn local_terminating_endpoints_are_used_when_no_local_one_is_ready() {
    let st = state(
        load_balancer(svc("lb")),
        vec![slice("lb", "lb-1", vec![ep("10.0.1.1", "node-b"), terminating(ep("10.0.1.2", NODE), true)])],
    );
    let r = one(&st);
    assert_eq!(ips(r.external.as_ref().unwrap().endpoints()), ["10.0.1.2:8080"]);
}

#[test]
fn external_traffic_policy_local_without_any_endpoints_rejects() {
    let st = state(load_balancer(svc("lb")), vec![]);
    assert_eq!(one(&st).external, Some(EndpointChoice::Reject));
}

#[test]
fn external_policy_is_ignored_for_services_not_externally_accessible() {
    let mut s = svc("web");
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(32000);
    let st = state(s, vec![slice("web", "web-1", vec![ep("10.0.1.1", "node-b")])]);
    let r = one(&st);
    assert!(!r.external_policy_local);
    assert_eq!(r.health_check_node_port, None);
}

#[test]
fn affinity_timeout_is_carried() {
    let mut s = svc("web");
    s.session_affinity_timeout = Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    let st = state(s, vec![]);
    assert_eq!(one(&st).affinity_timeout, Some(10800));
}

#[test]
fn families_are_resolved_separately() {
    let mut s = svc("dual");
    s.cluster_ips = vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    s.external_ips = vec!["198.51.100.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
    let mut v6 = slice("dual", "dual-v6", vec![ep("fd00:1::1", "node-b")]);
    v6.address_type = AddressType::IPv6;
    let st = state(s, vec![slice("dual", "dual-v4", vec![ep("10.0.1.1", "node-b")]), v6]);
    let r4 = resolve(&st, &ctx(), IpFamily::V4);
    let r6 = resolve(&st, &ctx(), IpFamily::V6);
    assert_eq!(r4[0].cluster_ip, "10.96.0.10".parse::<IpAddr>().unwrap());
    assert_eq!(r6[0].cluster_ip, "fd00::10".parse::<IpAddr>().unwrap());
    assert_eq!(ips(r6[0].internal.endpoints()), ["[fd00:1::1]:8080"]);
    assert_eq!(r6[0].external_ips, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(ips(r4[0].internal.endpoints()), ["10.0.1.1:8080"]);
}

#[test]
fn single_stack_service_is_absent_from_the_other_family() {
    let st = state(svc("web"), vec![]);
    assert!(resolve(&st, &ctx(), IpFamily::V6).is_empty());
}

#[test]
fn service_port_name_displays_like_kube_proxy() {
    let mut n =
        ServicePortName { service: ServiceName::new("ns1", "svc1"), port: "p80".into(), protocol: Protocol::Tcp };
    assert_eq!(n.to_string(), "ns1/svc1:p80");
    n.port.clear();
    assert_eq!(n.to_string(), "ns1/svc1");
}

#[test]
fn frontends_list_every_way_in() {
    let st = state(load_balancer(svc("lb")), vec![]);
    let f: Vec<String> = one(&st).frontends().iter().map(|f| format!("{} {f}", f.kind)).collect();
    assert_eq!(f, ["cluster IP 10.96.0.10:80", "loadbalancer IP 203.0.113.10:80", "node port *:30080"]);
}

#[test]
fn a_slice_moved_to_another_service_leaves_the_first() {
    let mut st = state(svc("web"), vec![slice("web", "s1", vec![ep("10.0.1.1", "node-b")])]);
    st.upsert_service(svc("api"));
    st.upsert_slice(slice("api", "s1", vec![ep("10.0.1.1", "node-b")]));
    let r = resolve(&st, &ctx(), IpFamily::V4);
    let web = r.iter().find(|p| p.name.service.name == "web").unwrap();
    assert_eq!(web.internal, EndpointChoice::Reject);
    st.remove_slice("ns", "s1");
    assert!(st.slices_of(&ServiceName::new("ns", "api")).next().is_none());
}

#[test]
fn endpoints_are_ordered_like_kube_proxy_by_their_ip_port_string() {
    let st = state(
        svc("web"),
        vec![slice("web", "s1", vec![ep("10.0.1.4", "node-b"), ep("10.0.1.10", "node-b"), ep("10.0.1.9", "node-b")])],
    );
    assert_eq!(ips(one(&st).internal.endpoints()), ["10.0.1.10:8080", "10.0.1.4:8080", "10.0.1.9:8080"]);
}
