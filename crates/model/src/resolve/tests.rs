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
        zone_hints: Default::default(),
        node_hints: Default::default(),
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

#[test]
fn both_policies_local_still_uses_cluster_endpoints_for_the_short_circuit() {
    // kube-proxy's UsesClusterEndpoints: an externally accessible port always has cluster-wide
    // endpoints, even with ITP=Local and ETP=Local: pods and the node reach its NodePort and
    // LB IP through them.
    let mut s = load_balancer(svc("both"));
    s.internal_traffic_policy = TrafficPolicy::Local;
    let st = state(s, vec![slice("both", "both-1", vec![ep("10.244.2.2", "node-b")])]);
    let p = one(&st);
    assert!(p.internal_policy_local && p.external_policy_local);
    assert_eq!(ips(&p.cluster_endpoints), ["10.244.2.2:8080"]);
    assert!(p.local_endpoints.is_empty());
    assert_eq!(p.internal, EndpointChoice::Drop);
    assert_eq!(p.external, Some(EndpointChoice::Drop));
    // A ClusterIP-only Service with ITP=Local does not use them.
    let mut c = svc("internal");
    c.internal_traffic_policy = TrafficPolicy::Local;
    let st = state(c, vec![slice("internal", "internal-1", vec![ep("10.244.2.2", "node-b")])]);
    assert!(one(&st).cluster_endpoints.is_empty());
}

fn ctx_with(nodeport: NodePortAddresses, locals: Option<&[&str]>) -> NodeContext {
    NodeContext {
        node_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        nodeport_addresses: nodeport,
        local_addresses: locals.map(|l| l.iter().map(|a| a.parse().unwrap()).collect()),
        ..ctx()
    }
}

fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
    s.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn nodeport_cidrs_select_interface_addresses() {
    let locals = ["127.0.0.1", "192.168.0.2", "192.168.1.2", "10.0.0.5", "fd00::2", "fd01::2", "::1"];
    let c = ctx_with(NodePortAddresses::Cidrs(nets(&["192.168.0.0/24", "192.168.1.0/24"])), Some(&locals));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(c.nodeport_ips(IpFamily::V4), NodePortIps::Ips(vec![ip("192.168.0.2"), ip("192.168.1.2")]));
    // No IPv6 CIDR given: kube-proxy takes every IPv6 address (its zero CIDR).
    assert_eq!(c.nodeport_ips(IpFamily::V6), NodePortIps::AnyLocal);
    assert!(c.takes_nodeports(&ip("192.168.1.2")));
    assert!(!c.takes_nodeports(&ip("10.0.0.5")));
    let c6 = ctx_with(NodePortAddresses::Cidrs(nets(&["fd01::/64", "0.0.0.0/0"])), Some(&locals));
    assert_eq!(c6.nodeport_ips(IpFamily::V6), NodePortIps::Ips(vec![ip("fd01::2")]));
    assert_eq!(c6.nodeport_ips(IpFamily::V4), NodePortIps::AnyLocal);
    // primary: the primary node IP, if it is an interface address.
    let p = ctx_with(NodePortAddresses::Primary, Some(&locals));
    assert_eq!(p.nodeport_ips(IpFamily::V4), NodePortIps::Ips(vec![ip("192.168.0.2")]));
    let elsewhere = ctx_with(NodePortAddresses::Primary, Some(&["192.168.9.9"]));
    assert_eq!(elsewhere.nodeport_ips(IpFamily::V4), NodePortIps::Ips(vec![]));
    // Away from the node (render, explain): the node IPs stand in for the interfaces.
    let offline = ctx_with(NodePortAddresses::Cidrs(nets(&["192.168.0.0/16"])), None);
    assert_eq!(offline.nodeport_ips(IpFamily::V4), NodePortIps::Ips(vec![ip("192.168.0.2")]));
    assert!(NodePortAddresses::All.contains_ipv4_loopback());
    assert!(!NodePortAddresses::Primary.contains_ipv4_loopback());
    assert!(NodePortAddresses::Cidrs(nets(&["127.0.0.0/16"])).contains_ipv4_loopback());
    assert!(NodePortAddresses::Cidrs(nets(&["fd00::/8"])).contains_ipv4_loopback(), "no IPv4 CIDR: all IPv4");
    assert!(!NodePortAddresses::Cidrs(nets(&["10.0.0.0/8"])).contains_ipv4_loopback());
}

#[test]
fn local_traffic_detectors_follow_the_mode() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut c = NodeContext {
        cluster_cidrs: nets(&["10.244.0.0/16", "10.245.0.0/16", "fd00:244::/48"]),
        pod_cidrs: nets(&["10.244.7.0/24"]),
        ..ctx()
    };
    // ClusterCIDR: the first CIDR of the family only, as kube-proxy.
    assert_eq!(c.local_traffic(IpFamily::V4), LocalTraffic::Cidr("10.244.0.0/16".parse().unwrap()));
    assert_eq!(c.is_local_traffic(&ip("10.245.0.1"), None), Some(false));
    c.detect_local = DetectLocalMode::NodeCidr;
    assert_eq!(c.local_traffic(IpFamily::V4), LocalTraffic::Cidr("10.244.7.0/24".parse().unwrap()));
    assert_eq!(c.local_traffic(IpFamily::V6), LocalTraffic::Unknown, "no IPv6 pod CIDR: no detector");
    c.detect_local = DetectLocalMode::BridgeInterface("cbr0".into());
    assert_eq!(c.is_local_traffic(&ip("192.0.2.1"), Some("cbr0")), Some(true));
    assert_eq!(c.is_local_traffic(&ip("192.0.2.1"), Some("cbr01")), Some(false));
    assert_eq!(c.is_local_traffic(&ip("192.0.2.1"), None), None);
    c.detect_local = DetectLocalMode::InterfaceNamePrefix("veth".into());
    assert_eq!(c.local_traffic(IpFamily::V6), LocalTraffic::InterfacePrefix("veth".into()));
    assert_eq!(c.is_local_traffic(&ip("fd00::1"), Some("veth1234")), Some(true));
    assert_eq!(c.masquerade_mark(), 0x4000);
    c.masquerade_bit = 12;
    assert_eq!(c.masquerade_mark(), 0x1000);
}

/// Found by `prop_resolver_invariants` (`crate::props`): with no node name (rendering for no node
/// in particular), an endpoint with `nodeName: ""` counted as local. kube-proxy's isLocal
/// requires a non-empty hostname.
#[test]
fn an_empty_node_name_is_local_to_no_endpoint() {
    let ctx = NodeContext::default();
    assert_eq!(ctx.node_name, "");
    let mut s = svc("web0");
    let e = terminating(ep("10.244.1.2", ""), true);
    let st = state(s.clone(), vec![slice("web0", "web0-0", vec![e.clone()])]);
    assert!(!resolve(&st, &ctx, IpFamily::V4)[0].cluster_endpoints[0].is_local);
    // With ITP=Local the nameless proxy has no local endpoint: drop, not route.
    s.internal_traffic_policy = TrafficPolicy::Local;
    let st = state(s, vec![slice("web0", "web0-0", vec![e])]);
    assert_eq!(resolve(&st, &ctx, IpFamily::V4)[0].internal, EndpointChoice::Drop);
}
