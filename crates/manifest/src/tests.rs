use nftproxy_model::*;

use crate::{Loaded, Skipped, Warning};

fn load(text: &str) -> Loaded {
    let mut l = Loaded::default();
    l.add_text("test.yaml", text);
    l
}

fn only_warning(l: &Loaded) -> String {
    assert_eq!(l.warnings.len(), 1, "warnings: {:?}", l.warnings);
    l.warnings[0].to_string()
}

const EXAMPLE: &str = include_str!("../../../examples/cluster.yaml");

#[test]
fn kubectl_list_example_loads_with_one_warning_for_the_malformed_service() {
    let l = load(EXAMPLE);
    let names: Vec<String> = l.state.services.keys().map(|n| n.to_string()).collect();
    assert_eq!(names, ["default/kubernetes", "edge/ingress", "shop/drain", "shop/web", "shop/zonal"]);
    assert_eq!(l.state.slices().len(), 6);
    assert_eq!(l.state.nodes.len(), 2);
    assert_eq!(
        only_warning(&l),
        "Service shop/broken: spec.ports[0].port: 70000 is out of range 1-65535 (object skipped)"
    );
}

#[test]
fn example_resolves_like_kube_proxy() {
    let l = load(EXAMPLE);
    let mut ctx = NodeContext { node_name: "node-a".into(), ..Default::default() };
    ctx.complete_from(&l.state.nodes["node-a"]);
    assert_eq!(ctx.zone.as_deref(), Some("zone-a"));
    let r = resolve(&l.state, &ctx, IpFamily::V4);
    let by = |n: &str| r.iter().find(|p| p.name.to_string() == n).unwrap();
    let eps = |c: &EndpointChoice| c.endpoints().iter().map(|e| e.to_string()).collect::<Vec<_>>();
    assert_eq!(eps(&by("shop/web:http").internal), ["10.244.1.11:8080", "10.244.2.12:8080", "10.244.3.13:8080"]);
    assert_eq!(eps(&by("shop/web:dns").internal), ["10.244.1.11:5353", "10.244.2.12:5353", "10.244.3.13:5353"]);
    assert_eq!(eps(&by("shop/drain:http").internal), ["10.244.1.21:8080"]);
    assert_eq!(eps(&by("shop/zonal:http").internal), ["10.244.1.31:8080"]);
    let ingress = by("edge/ingress:https");
    assert_eq!(eps(ingress.external.as_ref().unwrap()), ["10.244.1.41:8443"]);
    assert_eq!(eps(&ingress.internal), ["10.244.1.41:8443", "10.244.2.42:8443"]);
    assert_eq!(ingress.load_balancer_ips, vec!["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]);
}

#[test]
fn json_list_and_json_stream_load() {
    let l = load(
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"n"},
             "spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}}]}
           {"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"n"},
             "spec":{"clusterIP":"10.0.0.2","ports":[{"port":81,"protocol":"UDP"}]}}"#,
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.state.services.len(), 2);
    let b = &l.state.services[&ServiceName::new("n", "b")];
    assert_eq!(b.ports[0].protocol, Protocol::Udp);
    assert_eq!(b.ports[0].target_port, TargetPort::Number(81), "targetPort defaults to port");
}

#[test]
fn multi_document_yaml_skips_unknown_kinds() {
    let l = load(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
         apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: n}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n---\n",
    );
    assert_eq!(l.ignored_objects, 1);
    assert_eq!(l.state.services.len(), 1);
}

fn svc_yaml(spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: ns}}\nspec: {spec}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: good, namespace: ns}}\nspec: {{clusterIP: 10.0.0.9, ports: [{{port: 80}}]}}\n"
    )
}

fn assert_bad_service(spec: &str, want: &str) {
    let l = load(&svc_yaml(spec));
    assert_eq!(only_warning(&l), want);
    assert_eq!(l.state.services.len(), 1, "the good service must still be used");
}

#[test]
fn invalid_cluster_ip_names_the_field() {
    assert_bad_service(
        "{clusterIP: 10.0.0.300, ports: [{port: 80}]}",
        "Service ns/bad: spec.clusterIP: \"10.0.0.300\" is not a valid IP address (object skipped)",
    );
}

#[test]
fn unknown_protocol_names_the_field() {
    assert_bad_service(
        "{clusterIP: 10.0.0.1, ports: [{port: 80}, {port: 81, protocol: QUIC}]}",
        "Service ns/bad: spec.ports[1].protocol: unknown protocol \"QUIC\" (want TCP, UDP or SCTP) (object skipped)",
    );
}

#[test]
fn wrongly_typed_field_is_named_by_its_path() {
    let l = load(&svc_yaml("{clusterIP: 10.0.0.1, ports: [{port: eighty}]}"));
    let w = only_warning(&l);
    assert!(w.starts_with("Service ns/bad: spec.ports[0].port: invalid type"), "{w}");
}

#[test]
fn missing_name_is_reported() {
    let l = load("apiVersion: v1\nkind: Service\nmetadata: {namespace: ns}\nspec: {clusterIP: 10.0.0.1}\n");
    assert_eq!(only_warning(&l), "Service ns/<unnamed>: metadata.name: missing (object skipped)");
}

#[test]
fn invalid_external_ip_and_source_range_are_reported() {
    assert_bad_service(
        "{clusterIP: 10.0.0.1, externalIPs: [1.2.3.4, nope], ports: [{port: 80}]}",
        "Service ns/bad: spec.externalIPs[1]: \"nope\" is not a valid IP address (object skipped)",
    );
    assert_bad_service(
        "{type: LoadBalancer, clusterIP: 10.0.0.1, loadBalancerSourceRanges: [10.0.0.0/33], ports: [{port: 80, nodePort: 30001}]}",
        "Service ns/bad: spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a valid CIDR (object skipped)",
    );
}

#[test]
fn source_ranges_tolerate_whitespace_like_kube_proxy() {
    let l = load(&svc_yaml(
        "{type: LoadBalancer, clusterIP: 10.0.0.1, loadBalancerSourceRanges: [' 10.1.0.0/16 ', '192.168.1.7/24'], ports: [{port: 80, nodePort: 30001}]}",
    ));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let s = &l.state.services[&ServiceName::new("ns", "bad")];
    let r: Vec<String> = s.load_balancer_source_ranges.iter().map(|n| n.to_string()).collect();
    assert_eq!(r, ["10.1.0.0/16", "192.168.1.0/24"]);
}

#[test]
fn external_name_headless_and_foreign_services_are_skipped_not_warned() {
    let l = load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns}\nspec: {type: ExternalName, externalName: example.com}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: hl, namespace: ns}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: ns, labels: {service.kubernetes.io/service-proxy-name: foo}}\nspec: {clusterIP: 10.0.0.3, ports: [{port: 80}]}\n",
    );
    assert!(l.warnings.is_empty());
    assert!(l.state.services.is_empty());
    let kinds: Vec<&Skipped> = l.skipped_services.iter().map(|(_, s)| s).collect();
    assert_eq!(kinds, [&Skipped::ExternalName, &Skipped::Headless, &Skipped::OtherProxy("foo".into())]);
}

#[test]
fn affinity_defaults_to_three_hours() {
    let l = load(&svc_yaml("{clusterIP: 10.0.0.1, sessionAffinity: ClientIP, ports: [{port: 80}]}"));
    assert_eq!(l.state.services[&ServiceName::new("ns", "bad")].session_affinity_timeout, Some(10800));
}

#[test]
fn proxy_mode_load_balancer_ips_are_not_programmed() {
    let l = load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: ns}\nspec: {type: LoadBalancer, clusterIP: 10.0.0.1, ports: [{port: 80, nodePort: 30001}]}\n\
         status: {loadBalancer: {ingress: [{ip: 1.1.1.1, ipMode: Proxy}, {ip: 2.2.2.2}, {hostname: lb.example.com}]}}\n",
    );
    let s = &l.state.services[&ServiceName::new("ns", "lb")];
    assert_eq!(s.load_balancer_ips, vec!["2.2.2.2".parse::<std::net::IpAddr>().unwrap()]);
}

fn slice_yaml(labels: &str, body: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s1, namespace: ns, labels: {labels}}}\n{body}\n"
    )
}

#[test]
fn slice_without_service_label_is_reported() {
    let l = load(&slice_yaml("{}", "addressType: IPv4\nendpoints: []"));
    assert_eq!(
        only_warning(&l),
        "EndpointSlice ns/s1: metadata.labels[kubernetes.io/service-name]: missing: the slice belongs to no Service (object skipped)"
    );
}

#[test]
fn endpoint_conditions_follow_kubernetes_defaults() {
    let l = load(&slice_yaml(
        "{kubernetes.io/service-name: web}",
        "addressType: IPv4\nendpoints:\n- addresses: [10.1.0.1]\n- addresses: [10.1.0.2]\n  conditions: {ready: false}\n- addresses: [10.1.0.3]\n  conditions: {ready: false, serving: true, terminating: true}\n- addresses: []\nports: [{name: http, port: 80}, {name: nope}]",
    ));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let s = l.state.slices().values().next().unwrap();
    let c: Vec<(bool, bool, bool)> = s.endpoints.iter().map(|e| (e.ready, e.serving, e.terminating)).collect();
    assert_eq!(c, [(true, true, false), (false, false, false), (false, true, true)]);
    assert_eq!(s.ports.len(), 1, "a port without a number is skipped");
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
}

#[test]
fn endpoint_of_the_wrong_family_is_reported() {
    let l = load(&slice_yaml(
        "{kubernetes.io/service-name: web}",
        "addressType: IPv4\nendpoints:\n- addresses: ['fd00::1']",
    ));
    assert_eq!(
        only_warning(&l),
        "EndpointSlice ns/s1: endpoints[0].addresses[0]: fd00::1 is not an IPv4 address (addressType IPv4) (object skipped)"
    );
}

#[test]
fn a_syntax_error_anywhere_fails_the_whole_source_and_empty_needs_permission() {
    // Parsing text reports the broken document (the others still parse)…
    let text =
        format!("{}---\napiVersion: v1\nkind: [unclosed\n", svc_yaml("{clusterIP: 10.0.0.1, ports: [{port: 80}]}"));
    let l = load(&text);
    assert!(matches!(&l.warnings[..], [Warning::Document { .. }]), "{:?}", l.warnings);
    // …but a source with one is not used at all: last good state wins (a half-written file
    // must not remove the Services after the break).
    let dir = std::env::temp_dir().join(format!("knp-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("cluster.yaml");
    std::fs::write(&f, &text).unwrap();
    let e = crate::load_path(&f).unwrap_err().to_string();
    let lines = text.lines().count();
    assert!(e.starts_with(&format!("{} (document 3, line {lines}): ", f.display())), "{e}");
    for (content, what) in [("", "empty"), ("# nothing yet\n", "comments only"), ("---\n---\n", "empty documents")] {
        std::fs::write(&f, content).unwrap();
        let e = crate::load_path(&f).unwrap_err();
        assert!(matches!(e, crate::LoadError::NoObjects(_)), "{what}: {e}");
        assert!(crate::load_path_with(&f, true).unwrap().state.services.is_empty(), "{what}, allowed");
    }
    std::fs::write(&f, "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [").unwrap();
    assert!(matches!(crate::load_path(&f), Err(crate::LoadError::Parse { .. })), "truncated JSON");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn addresses_are_parsed_as_kube_proxys_parse_ip_sloppy_does() {
    use crate::convert::{parse_cidr_sloppy, parse_ip_sloppy};
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(parse_ip_sloppy("010.096.000.010"), Some(ip("10.96.0.10")), "leading zeros are decimal");
    assert_eq!(parse_ip_sloppy(" 10.96.0.10 "), Some(ip("10.96.0.10")));
    assert_eq!(parse_ip_sloppy("::ffff:010.001.002.003"), Some(ip("::ffff:10.1.2.3")));
    assert_eq!(parse_ip_sloppy("fd00::0010"), Some(ip("fd00::10")));
    for bad in ["256.1.1.1", "1.2.3", "1.2.3.4.5", "0x10.1.1.1", "1..2.3", "1.2.3.0256", ""] {
        assert_eq!(parse_ip_sloppy(bad), None, "{bad:?}");
    }
    assert_eq!(parse_cidr_sloppy(" 010.000.001.000/024 "), Some("10.0.1.0/24".parse().unwrap()));
    assert_eq!(parse_cidr_sloppy("10.0.1.7/24"), Some("10.0.1.0/24".parse().unwrap()), "masked like Go's");
    assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);

    let l = load(
        r#"
apiVersion: v1
kind: Service
metadata: {name: sloppy, namespace: n}
spec:
  type: LoadBalancer
  clusterIP: 010.096.000.010
  externalIPs: ["192.000.002.010"]
  loadBalancerSourceRanges: [" 10.0.1.0/24 ", "192.168.000.000/16"]
  ports: [{port: 80}]
status: {loadBalancer: {ingress: [{ip: 203.000.113.010}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sloppy-1, namespace: n, labels: {kubernetes.io/service-name: sloppy}}
addressType: IPv4
endpoints: [{addresses: [010.244.001.002]}]
ports: [{port: 8080}]
"#,
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let s = &l.state.services[&ServiceName::new("n", "sloppy")];
    assert_eq!(s.cluster_ips, vec![ip("10.96.0.10")]);
    assert_eq!(s.external_ips, vec![ip("192.0.2.10")]);
    assert_eq!(s.load_balancer_ips, vec![ip("203.0.113.10")]);
    assert_eq!(s.load_balancer_source_ranges, vec!["10.0.1.0/24".parse().unwrap(), "192.168.0.0/16".parse().unwrap()]);
    assert_eq!(l.state.slices().values().next().unwrap().endpoints[0].address, ip("10.244.1.2"));
}

#[test]
fn service_cidrs_and_node_pod_cidrs_load() {
    let l = load(
        r#"
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16, "fd00:96::/112"]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: broken}
spec: {cidrs: [10.97.0.0/99]}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 10.0.1.1}]}
"#,
    );
    assert_eq!(
        only_warning(&l),
        "ServiceCIDR broken: spec.cidrs[0]: \"10.97.0.0/99\" is not a valid CIDR (object skipped)"
    );
    assert_eq!(
        l.state.service_cidrs(),
        vec!["10.96.0.0/16".parse::<ipnet::IpNet>().unwrap(), "fd00:96::/112".parse().unwrap()]
    );
    assert_eq!(l.state.nodes["node-a"].pod_cidrs.len(), 2);
    let mut ctx = NodeContext { node_name: "node-a".into(), ..Default::default() };
    ctx.complete_from_state(&l.state);
    assert_eq!(ctx.pod_cidrs, l.state.nodes["node-a"].pod_cidrs);
    assert_eq!(ctx.service_cidrs(IpFamily::V6).count(), 1);
}

/// A list's items in JSON are typed straight from their text (`add_raw`); a bad one is named
/// and worded as the same object is from YAML, whether the list is read from a file (lent text
/// or read as it is parsed) or given as a string, and the good ones around it still load.
#[test]
fn a_bad_item_of_a_json_list_reads_as_from_yaml() {
    let bad = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "ns"},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": "eighty"}]}});
    let good = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "good", "namespace": "ns"},
        "spec": {"clusterIP": "10.0.0.2", "ports": [{"port": 80}]}});
    let from_yaml = only_warning(&load(&serde_yaml::to_string(&bad).unwrap()));
    assert!(from_yaml.starts_with("Service ns/bad: spec.ports[0].port: invalid type"), "{from_yaml}");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [good, bad, good]}).to_string();

    let l = load(&list);
    assert_eq!(only_warning(&l), from_yaml);
    assert_eq!(l.state.services.keys().map(|n| n.to_string()).collect::<Vec<_>>(), ["ns/good"]);
    assert_eq!(l.objects, 3);

    let dir = std::env::temp_dir().join(format!("knp-manifest-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("list.json");
    std::fs::write(&file, &list).unwrap();
    let whole = crate::load_path(&file).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let streamed = crate::stream_path(&file, false, move |o| tx.send(o).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(only_warning(&whole), from_yaml);
    assert_eq!(whole.state, l.state);
    assert_eq!(only_warning(&streamed), from_yaml);
    assert_eq!(rx.try_iter().count(), 2, "the good Service, twice");
}
