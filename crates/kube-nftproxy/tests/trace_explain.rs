//! `trace` and `explain` on the kernel: the trace shows the path the packet really took, ending
//! in the DNAT to the endpoint that answered; a Service without endpoints shows the reject; the
//! marking chains are gone afterwards; and `explain` agrees with what the kernel did.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use nftproxy_explain::{Flow, Verdict, explain};
use nftproxy_integration::lab::{CLIENT_IP, Lab, NODE_IP, POD_CLIENT_IP, pod_ip};
use nftproxy_integration::{Ns, Outcome, Proto, request, tally};
use nftproxy_manifest::Loaded;
use nftproxy_model::Protocol;
use serde_json::Value;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 8080}
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: dns, port: 8080, protocol: UDP}, {name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.2.2], nodeName: node-b, conditions: {ready: true}}
- {addresses: [10.244.3.2], nodeName: node-c, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.30}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: demo, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.244.2.2], nodeName: node-b, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: remote, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30091}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.40}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: remote-1, namespace: demo, labels: {kubernetes.io/service-name: remote}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.2], nodeName: node-b, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: guarded, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30092}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.50}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: guarded-1, namespace: demo, labels: {kubernetes.io/service-name: guarded}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-a, conditions: {ready: true}}
"#;

const WEB6: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: web6, namespace: demo}
spec:
  clusterIP: fd00:96::10
  clusterIPs: [fd00:96::10]
  ipFamilies: [IPv6]
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web6-1, namespace: demo, labels: {kubernetes.io/service-name: web6}}
addressType: IPv6
ports: [{name: dns, port: 8080, protocol: UDP}]
endpoints:
- {addresses: ["fd00:244:1::2"], conditions: {ready: true}}
- {addresses: ["fd00:244:2::2"], conditions: {ready: true}}
"#;

/// `kube-nftproxy trace … --output json` in the node namespace; returns once it is tracing.
fn start_trace(node: &Ns, proto: &str, dst: &str, dport: u16) -> Child {
    start_trace_from(node, CLIENT_IP, proto, dst, dport)
}

fn start_trace_from(node: &Ns, src: &str, proto: &str, dst: &str, dport: u16) -> Child {
    let mut child = node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["trace", "--src", src, "--dst", dst, "--proto", proto, "--dport", &dport.to_string()])
        .args(["--count", "1", "--timeout", "10", "--output", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("tracing "), "trace did not start: {line}");
    // Keep draining stderr so the process never blocks on it.
    std::thread::spawn(move || for _ in err.lines() {});
    child
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "trace failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "one packet traced: {v:#}");
    v[0].clone()
}

fn chains(p: &Value) -> Vec<String> {
    p["steps"].as_array().unwrap().iter().map(|s| s["chain"].as_str().unwrap().to_string()).collect()
}

#[test]
fn trace_shows_the_path_and_the_endpoint_that_answered() {
    let mut lab = Lab::new(3);
    lab.sync(&format!("{MANIFESTS}{WEB6}")).unwrap();

    let tracer = start_trace(&lab.node, "udp", "10.96.0.10", 53);
    let answer = lab.client.run(|| request(Proto::Udp, "10.96.0.10:53".parse().unwrap(), None, Duration::from_secs(1)));
    let p = finish(tracer);
    let Outcome::Answered { responder, .. } = answer else { panic!("no answer: {answer:?}") };
    let ep: usize = responder.trim_start_matches("ep").parse().unwrap();
    assert_eq!(p["dnatTo"], format!("{}:8080", pod_ip(ep)), "the trace's DNAT is the endpoint that answered: {p:#}");
    assert_eq!(p["servicePort"], "demo/web:dns");
    assert_eq!(p["outcome"], "accept");
    let path = chains(&p);
    for c in ["nat-prerouting", "services", "cluster-3"] {
        assert!(path.contains(&c.to_string()), "{c} in {path:?}");
    }
    let hit = p["steps"].as_array().unwrap().iter().find(|s| s["mapHit"].is_string()).unwrap();
    assert_eq!(hit["mapHit"], "@cluster-3-frontends: demo/web:dns");
    assert_eq!(hit["verdict"], "goto cluster-3");

    // No endpoints: the path ends in the reject.
    let tracer = start_trace(&lab.node, "udp", "10.96.0.20", 53);
    let answer = lab.client.run(|| request(Proto::Udp, "10.96.0.20:53".parse().unwrap(), None, Duration::from_secs(1)));
    assert_eq!(answer, Outcome::Refused);
    let p = finish(tracer);
    assert_eq!(p["outcome"], "reject", "{p:#}");
    assert_eq!(p["dnatTo"], Value::Null);
    assert!(chains(&p).contains(&"reject-chain".to_string()), "{:?}", chains(&p));

    // IPv6: the same, in the ip6 table.
    let tracer = start_trace_from(&lab.node, "fd00:1::2", "udp", "fd00:96::10", 53);
    let answer =
        lab.client.run(|| request(Proto::Udp, "[fd00:96::10]:53".parse().unwrap(), None, Duration::from_secs(1)));
    let p = finish(tracer);
    let Outcome::Answered { responder, .. } = answer else { panic!("no IPv6 answer: {answer:?}") };
    let ep: usize = responder.trim_start_matches("ep").parse().unwrap();
    assert_eq!(p["dnatTo"], format!("[fd00:244:{ep}::2]:8080"), "{p:#}");
    assert_eq!(p["servicePort"], "demo/web6:dns");
    assert!(p["steps"].as_array().unwrap().iter().all(|s| s["family"] == "ip6"));

    // Tracing is off again: no chain of the tracer is left.
    let table = lab.ruleset();
    assert!(!table.contains("trace-"), "trace chains left:\n{table}");
    assert!(!table.contains("nftrace"));
}

#[test]
fn explain_agrees_with_the_kernel() {
    let mut lab = Lab::new(3);
    lab.sync(MANIFESTS).unwrap();
    let mut loaded = Loaded::default();
    loaded.add_text("t", MANIFESTS);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let cases: [(&Ns, &str, &str, u16, Proto); 7] = [
        (&lab.client, CLIENT_IP, "10.96.0.10", 80, Proto::Tcp), // ClusterIP from off-cluster
        (&lab.pod_client, POD_CLIENT_IP, "10.96.0.10", 80, Proto::Tcp), // ClusterIP from a pod
        (&lab.client, CLIENT_IP, NODE_IP, 30080, Proto::Tcp),   // NodePort from outside
        (&lab.client, CLIENT_IP, "192.0.2.30", 80, Proto::Tcp), // ETP Local, a local endpoint
        (&lab.client, CLIENT_IP, "192.0.2.40", 80, Proto::Tcp), // ETP Local, none here
        (&lab.client, CLIENT_IP, "192.0.2.50", 80, Proto::Tcp), // source range miss
        (&lab.client, CLIENT_IP, "10.96.0.20", 53, Proto::Udp), // no endpoints
    ];
    for (from, src, dst, dport, proto) in cases {
        let protocol = if proto == Proto::Tcp { Protocol::Tcp } else { Protocol::Udp };
        let ex = explain(&loaded.state, &lab.ctx, Flow { src: ip(src), dst: ip(dst), protocol, dport, iifname: None }, false);
        // Drops wait out every timeout: fewer of those.
        let n = if matches!(ex.verdict, Verdict::Dnat { .. }) { 30 } else { 10 };
        let t = tally(from, proto, format!("{dst}:{dport}").parse().unwrap(), None, n, Duration::from_millis(500));
        let what = format!("{proto:?} {src} → {dst}:{dport}");
        match &ex.verdict {
            Verdict::Dnat { candidates } => {
                let want: std::collections::BTreeSet<String> =
                    candidates.iter().map(|c| c.endpoint.split(':').next().unwrap().to_string()).collect();
                let got = t.by_responder();
                assert_eq!(t.count(|o| matches!(o, Outcome::Answered { .. })), 30, "{what}: all answered");
                let got_ips: std::collections::BTreeSet<String> =
                    got.keys().map(|r| pod_ip(r.trim_start_matches("ep").parse().unwrap())).collect();
                assert_eq!(got_ips, want, "{what}: the endpoints that answered are explain's candidates");
                let kept = t.seen_sources().iter().all(|s| s.to_string() == src);
                assert_eq!(!kept, ex.masquerade, "{what}: masquerade ({})", ex.masquerade_reason);
            }
            Verdict::Reject { .. } => {
                assert_eq!(t.count(|o| *o == Outcome::Refused), n, "{what}: rejected");
            }
            Verdict::Drop { .. } => {
                assert_eq!(t.count(|o| *o == Outcome::Timeout), n, "{what}: dropped");
            }
            Verdict::NotOurs { reason } => panic!("{what}: not ours? {reason}"),
        }
    }
}

#[test]
fn trace_cleans_up_on_ctrl_c_and_refuses_without_our_table() {
    let mut lab = Lab::new(1);
    // Without our table: a clear error, nothing added.
    let out = lab
        .node
        .command(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(["trace", "--src", CLIENT_IP, "--dst", "10.96.0.10", "--proto", "tcp", "--dport", "80"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no table ip kube-nftproxy in this network namespace"), "{err}");
    assert_eq!(lab.node.exec("nft", &["list", "tables"]).trim(), "", "nothing was created");

    // Ctrl-C while waiting: the chains go, the exit is clean.
    lab.sync(MANIFESTS).unwrap();
    let tracer = start_trace(&lab.node, "tcp", "10.96.0.10", 80);
    assert!(lab.ruleset().contains("meta nftrace set 1"), "tracing is on while it runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let out = tracer.wait_with_output().unwrap();
    assert!(out.status.success(), "exit after Ctrl-C: {}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]), "no packet was traced");
    let table = lab.ruleset();
    assert!(!table.contains("trace-") && !table.contains("nftrace"), "{table}");
}
